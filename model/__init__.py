"""The PiTe network: frame features -> adapter -> LLM (LoRA) -> localisation / trajectory heads.

    config.py        PiteConfig (network, losses, LoRA, readout), LabelConfig (how samples become examples)
    conversation.py  the Vicuna v1 template, prompts, VTimeLLM frame-index timestamps
    tokenizer.py     train a small fast tokenizer offline / load one; the <video> placeholder token
    labels.py        sample -> conversation -> token ids, LM labels, phrase last-token head targets
    batch.py         pad examples into PiteModel.forward's arguments
    pite.py          PiteModel: splicing, heads, losses, generate()
    losses.py        masked L1 and LM cross-entropy as (sum, count), global-count normalisation
    checkpoint.py    save / load / merge_lora
    factory.py       build a PiteModel on a local pretrained LLM, or tiny and random
"""
