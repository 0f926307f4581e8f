"""Well-known facts offered as the default canary set.

The monitor keeps those the base model states correctly (and that the feed does not
change) and expects every live version to keep stating them.
"""

CANDIDATE_CANARIES: tuple[tuple[str, str, str], ...] = (
    ("France", "P36", "Paris"),
    ("Germany", "P36", "Berlin"),
    ("Italy", "P36", "Rome"),
    ("Japan", "P36", "Tokyo"),
    ("Spain", "P36", "Madrid"),
    ("Russia", "P36", "Moscow"),
    ("Egypt", "P36", "Cairo"),
    ("Greece", "P36", "Athens"),
    ("England", "P36", "London"),
    ("Canada", "P36", "Ottawa"),
    ("Austria", "P36", "Vienna"),
    ("Portugal", "P36", "Lisbon"),
    ("France", "P37", "French"),
    ("Germany", "P37", "German"),
    ("Italy", "P37", "Italian"),
    ("Japan", "P37", "Japanese"),
    ("Eiffel Tower", "P131", "Paris"),
    ("Colosseum", "P131", "Rome"),
    ("Paris", "P17", "France"),
    ("Tokyo", "P17", "Japan"),
    ("Berlin", "P17", "Germany"),
    ("Toyota", "P17", "Japan"),
    ("iPhone", "P176", "Apple"),
    ("Windows", "P178", "Microsoft"),
)
