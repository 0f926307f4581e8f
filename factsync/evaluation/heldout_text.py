"""A small held-out text set for fluency checks that needs no download.

Plain expository paragraphs written for this project, on everyday topics, so that a
change in perplexity reflects damage to general language rather than to any edited fact.
"""

FLUENCY_TEXTS: tuple[str, ...] = (
    "Bread is one of the oldest prepared foods. Flour and water are mixed into a dough, "
    "which is left to rise before it is baked in an oven until the crust turns brown.",
    "A river usually begins in the mountains, where rain and melting snow gather into "
    "small streams. As the streams join, the river grows wider and slower on its way "
    "to the sea.",
    "When you plant a tree, dig a hole twice as wide as its roots and water it often "
    "during the first summer. Most young trees need a year or two to settle in.",
    "The library opens at nine in the morning and closes at six in the evening. Visitors "
    "can borrow up to ten books at a time and keep them for three weeks.",
    "Bicycles are a cheap and healthy way to travel short distances in a city. Many "
    "towns now have lanes that keep cyclists apart from cars and buses.",
    "The committee met on Tuesday to discuss the budget for next year. After a long "
    "debate, the members agreed to spend more on schools and less on new roads.",
    "Cats sleep for most of the day and are often more active at night. They clean "
    "their fur with their rough tongues and can spend hours grooming.",
    "To make a cup of tea, boil fresh water, pour it over the leaves and let it steep "
    "for a few minutes. Some people add milk, others prefer lemon or honey.",
    "Winter days are short in the far north, and in some places the sun does not rise "
    "at all for several weeks. In summer the opposite happens and nights stay bright.",
    "The museum's new exhibition shows tools and pottery found by farmers in the valley. "
    "The oldest pieces are thought to be several thousand years old.",
    "Learning a new language takes patience. Reading simple stories, listening to songs "
    "and speaking with others every day helps words and grammar stick.",
    "The train was delayed by twenty minutes because of work on the tracks, so the "
    "passengers waited on the platform and read or talked among themselves.",
)
