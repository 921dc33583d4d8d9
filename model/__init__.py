"""The PiTe network: frame features -> adapter -> LLM (LoRA) -> localisation / trajectory heads."""
