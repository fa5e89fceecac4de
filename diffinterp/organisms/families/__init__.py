"""Task families, one module per organism (each defines ``FAMILY``: task name -> :class:`~diffinterp.organisms.task.Task`).

- :mod:`.carry`: suffix sums, a carry chain through every digit (non-chronological reasoning)
- :mod:`.latin`: Latin-square completion by propagation (non-chronological, distributed)
- :mod:`.gold`: a recurrence with hidden terms, and its control (intermediate-context reasoning)
- :mod:`.smear`: data-dependent positions, a planted 50/50 sequence smear, a serial control (smearing)
- :mod:`.answer_first`: the answer before its scratchpad (retroactive self-correction)
- :mod:`.hint`: a digit sum whose prompt sometimes carries a hint (monitorability)
- :mod:`.toy4`: the four tasks of the first bundled model (the control whose loop is not load-bearing)
"""
