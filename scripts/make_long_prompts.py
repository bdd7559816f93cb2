"""Write examples/long_prompts.jsonl: the long-prompt dev set (MT-bench's JSONL format).

Task types users bring besides chat: a given text to summarise, translate, extract from or
answer questions about, multi-step arithmetic, and code to explain. The passages are our own
writing and Python-reference topics that head training never uses (train_tasks.HELD_OUT_TOPICS),
so the set measures heads on contexts they have not seen. Never tune on MT-bench; tune here.

    python scripts/make_long_prompts.py
"""

from __future__ import annotations

import json
from pathlib import Path

from pydoc_data.topics import topics

from eagle2.train_tasks import HELD_OUT_TOPICS, chunks

PASSAGES = {
    "lighthouse": (
        "The lighthouse on Gull Point was built in 1868 after three ships ran aground on the reef in a "
        "single winter. Its first keeper, Margaret Hale, kept a logbook for forty-one years, recording "
        "every storm, every passing vessel and the price of lamp oil. In 1931 the lamp was electrified "
        "and the keeper's cottage was turned into a small museum. Today the light is automatic, but "
        "volunteers still climb the 112 steps each Sunday to polish the brass and to show visitors the "
        "logbooks, which describe how the keeper once rowed out alone to rescue two fishermen."),
    "bees": (
        "Honey bees communicate the location of food through a behaviour called the waggle dance. A "
        "forager returning to the hive walks in a figure-eight pattern on the vertical surface of the "
        "comb. The angle of the straight run relative to vertical tells the other bees the direction of "
        "the food relative to the sun, and the duration of the waggle tells them the distance. Bees that "
        "watch the dance then fly out and search the indicated area, using scent to find the exact "
        "flowers. Researchers have shown that colonies can redirect most of their foragers to a richer "
        "food source within a few hours."),
    "budget": (
        "The city council approved next year's budget on Tuesday by a vote of seven to two. Spending "
        "rises by 4 percent to 182 million dollars. The largest increases go to public transport, which "
        "receives 12 million for new electric buses, and to libraries, whose opening hours will be "
        "extended on weekends. To pay for this, parking fees in the city centre will rise from two to "
        "three dollars per hour, and the council will delay the renovation of the old sports hall by two "
        "years. The two members who voted against said the parking increase would hurt small shops."),
    "coffee": (
        "To brew coffee with a French press, heat water to just below boiling, about 94 degrees Celsius. "
        "Use roughly one gram of coarsely ground coffee for every fifteen grams of water. Pour a little "
        "water over the grounds first and wait thirty seconds so that the coffee can release gas, then "
        "add the rest of the water and stir gently. Put the lid on without pressing and let it steep for "
        "four minutes. Finally, press the plunger down slowly and serve at once, because coffee left in "
        "the press keeps extracting and becomes bitter."),
    "trial": (
        "In the study, 240 adults with mild sleep problems were divided into two groups. For eight weeks, "
        "the first group followed a fixed schedule, going to bed and getting up at the same time every "
        "day, while the second group received only general advice about sleep. At the end, people in the "
        "fixed-schedule group fell asleep on average 14 minutes faster and woke up less often during the "
        "night. However, the difference in total sleep time was small, about 11 minutes, and the "
        "researchers noted that most participants found the fixed schedule hard to keep at weekends."),
    "email": (
        "Hi team, a quick update on the move to the new office. The movers will come on Friday the 14th "
        "at 8 am, so please pack your desks by Thursday evening and label every box with your name and "
        "floor number. Laptops should go home with you over the weekend. The new building opens on "
        "Monday the 17th; your access cards will be at the reception desk on the ground floor. Parking "
        "is not available during the first week, so please use the bus or the bike racks. Questions go "
        "to Sam in facilities. Thanks, Priya"),
    "volcano": (
        "A volcano forms where molten rock, called magma, rises from deep inside the Earth to the surface. "
        "Most volcanoes are found along the edges of tectonic plates. Where one plate slides beneath "
        "another, the sinking rock melts and the magma pushes upward, building steep cones such as Mount "
        "Fuji. Where plates move apart, as in Iceland, magma fills the gap and forms long fissures. Some "
        "volcanoes, like those of Hawaii, sit above hot spots in the middle of a plate. When pressure "
        "builds up, the magma erupts as lava, ash and gas, which can change the landscape in hours."),
    "recipe": (
        "For a simple tomato soup you need one onion, two cloves of garlic, a kilogram of ripe tomatoes, "
        "half a litre of vegetable stock, olive oil, salt and a few basil leaves. Chop the onion and "
        "garlic and cook them in oil over medium heat for five minutes until soft. Add the chopped "
        "tomatoes and cook for ten more minutes, stirring from time to time. Pour in the stock, bring it "
        "to a boil and let it simmer for twenty minutes. Blend until smooth, season with salt, and serve "
        "with the basil on top and a slice of toasted bread."),
}

CODE = {
    "moving_average": (
        "def moving_average(values, window):\n"
        "    if window <= 0:\n"
        "        raise ValueError('window must be positive')\n"
        "    out, total = [], 0.0\n"
        "    for i, v in enumerate(values):\n"
        "        total += v\n"
        "        if i >= window:\n"
        "            total -= values[i - window]\n"
        "        if i >= window - 1:\n"
        "            out.append(total / window)\n"
        "    return out"),
    "word_count": (
        "import re\nfrom collections import Counter\n\n"
        "def top_words(text, n=5):\n"
        "    words = re.findall(r\"[a-z']+\", text.lower())\n"
        "    stop = {'the', 'a', 'and', 'of', 'to', 'in'}\n"
        "    counts = Counter(w for w in words if w not in stop)\n"
        "    return counts.most_common(n)"),
    "retry": (
        "import time\n\n"
        "def retry(func, attempts=3, delay=1.0):\n"
        "    last = None\n"
        "    for i in range(attempts):\n"
        "        try:\n"
        "            return func()\n"
        "        except Exception as e:\n"
        "            last = e\n"
        "            time.sleep(delay * 2 ** i)\n"
        "    raise last"),
}

MATH = [
    ("A bakery sells muffins for $3 each and cookies for $1.50 each. On Saturday it sold 84 muffins "
     "and twice as many cookies. Its costs for the day were $190. How much profit did it make? Show "
     "each step of your calculation."),
    ("Maria reads 18 pages of a 420-page book every weekday and 35 pages on each day of the weekend. "
     "How many full weeks does she need to finish the book, and how many pages are left for the last "
     "partial week? Explain your reasoning."),
    ("A car uses 6.5 litres of fuel per 100 km. Fuel costs 1.80 euros per litre. A family drives 340 km "
     "to the coast and back. How much do they spend on fuel, and how much would they save with a car "
     "that uses 5 litres per 100 km? Work it out step by step."),
    ("A school has 28 classes with 26 students each. Every student needs 3 notebooks and notebooks come "
     "in packs of 10. How many packs must the school buy, and how many notebooks are left over? Think "
     "step by step."),
    ("Two friends start walking towards each other from towns 27 km apart. One walks at 4 km/h and the "
     "other at 5 km/h. After how long do they meet, and how far from the first town? Show your work."),
]


def items() -> list[dict]:
    p = PASSAGES
    rows = [
        ("summarise", f"Summarize the following text in three sentences.\n\n{p['lighthouse']}"),
        ("summarise", f"{p['budget']}\n\nSummarize the news above in a few bullet points."),
        ("summarise", f"Write a short summary of this text for a beginner:\n\n{p['volcano']}"),
        ("summarise", f"Read the study below and give me its main findings.\n\n{p['trial']}"),
        ("translate", f"Translate the following text into French.\n\n{p['coffee']}"),
        ("translate", f"Please translate this paragraph to Spanish:\n\n{p['bees']}"),
        ("translate", f"{p['email']}\n\nTranslate the email above into German."),
        ("extract", f"List every date, time and place mentioned in this email, one per line.\n\n{p['email']}"),
        ("extract", f"Extract all ingredients and quantities from this recipe as a table.\n\n{p['recipe']}"),
        ("extract", f"From the text below, extract every number and say what it refers to.\n\n{p['budget']}"),
        ("qa", f"{p['bees']}\n\nBased only on the text above, how do bees tell each other the distance to food?"),
        ("qa", f"Answer using the passage below. Why was the keeper's cottage turned into a museum, and what "
               f"do volunteers do today?\n\nPassage:\n{p['lighthouse']}"),
        ("qa", f"Context:\n{p['trial']}\n\nUsing the context, was the fixed schedule a success? Explain both "
               f"sides."),
        ("qa", f"Here are instructions:\n\n{p['coffee']}\n\nQuestion: What goes wrong if I leave the coffee in "
               f"the press, and why?"),
    ]
    for key in ("with", "exceptions", "lambda", "raise", "import", "dict"):
        text = chunks(topics[key], 1500)[0]
        kind = {"with": "summarise", "exceptions": "qa", "lambda": "extract", "raise": "summarise",
                "import": "qa", "dict": "extract"}[key]
        ask = {"summarise": "Summarize the following documentation in simple words.\n\n{t}",
               "qa": "{t}\n\nBased on the documentation above, what are the most important rules a programmer "
                     "should remember?",
               "extract": "List every Python keyword, function or object mentioned in this text.\n\n{t}"}[kind]
        rows.append((kind, ask.format(t=text)))
    for name, code in CODE.items():
        rows.append(("code", f"Explain what this Python function does, step by step, and point out any edge "
                             f"cases.\n\n```python\n{code}\n```"))
    rows += [("math", m) for m in MATH]
    return [{"question_id": 7001 + i, "category": kind, "turns": [text]} for i, (kind, text) in enumerate(rows)]


def main() -> None:
    assert {"with", "exceptions", "lambda", "raise", "import", "dict"} <= HELD_OUT_TOPICS
    out = Path(__file__).resolve().parent.parent / "examples" / "long_prompts.jsonl"
    rows = items()
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} items -> {out}")


if __name__ == "__main__":
    main()
