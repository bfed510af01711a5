"""Did the method work? Instruments that measure each part against labels, and the comparison of
policies a run (or two runs) produced.

    instruments.py  the judge's quality (judges/quality.py) on a job's judge; a reward model's
                    accuracy; the refusal detector on labelled answers (`cai-ray eval ...`)
    refusals.py     the refusal detector (phrases, no judge)
    arena.py        answers of every policy, refusal figures, the judge's tournament and Elo
    report.py       report.md and a self-contained report.html
    compare.py      two runs' final policies on the same prompts (`cai-ray eval compare`)
"""
