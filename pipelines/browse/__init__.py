"""`pite browse RUN --out DIR`: a static site to look through a run in a browser, offline.

    rows.py     every row of a run (kept samples and rejects) as the table's columns
    pages.py    a page per chosen sample: its frame sheet and arrays, built in worker processes
    site.py     which samples get pages, the table's data files, the page code copied in
    cli.py      the command line (`python -m pipelines.browse`)
    static/     index.html (the table: sort, filter, pages of rows) and sample.html (frames, masks, tracks)
"""
