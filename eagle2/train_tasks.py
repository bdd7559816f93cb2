"""Task prompts for head training: the kinds of requests users bring besides chat.

Chat prompts written by the target (Magpie, `train_data.py`) are short requests. Users also
paste long texts to summarise, translate, extract from or answer questions about, ask for
multi-step arithmetic and for code. A head that never saw such contexts drafts badly on them,
so the pipeline adds prompts of those kinds, built from text that is at hand offline:

* passages: the Python language reference that ships with CPython (`pydoc_data.topics`) and
  the target's own longer chat answers (text the target writes itself);
* code: source of small functions from the standard library;
* arithmetic word problems from templates with random numbers.

No benchmark is read. The topics in `HELD_OUT_TOPICS` are never used here: the long-prompt
dev set (`examples/long_prompts.jsonl`) draws its technical passages from them.
"""

from __future__ import annotations

import inspect
import random
import re

HELD_OUT_TOPICS = frozenset({
    "assert", "async", "booleans", "break", "context-managers", "dict", "exceptions", "formatstrings",
    "global", "import", "lambda", "naming", "pass", "raise", "truth", "with", "yield",
})

SUMMARISE = [
    "Summarize the following text in three sentences.\n\n{text}",
    "Write a short summary of this text for a beginner:\n\n{text}",
    "{text}\n\nSummarize the text above in a few bullet points.",
    "Read the passage below and give me its main points.\n\n{text}",
    "TL;DR of the following, please:\n\n{text}",
    "Rewrite the following text in simpler words.\n\n{text}",
]
TRANSLATE = [
    "Translate the following text into {lang}.\n\n{text}",
    "Please translate this paragraph to {lang}:\n\n{text}",
    "{text}\n\nTranslate the text above into {lang}.",
]
LANGS = ["French", "Spanish", "German", "Italian", "Portuguese"]
EXTRACT = [
    "List every technical term that appears in the text below, one per line.\n\n{text}",
    "Extract the key facts from this text as a numbered list.\n\n{text}",
    "{text}\n\nFrom the text above, extract all names of functions, keywords or objects it mentions.",
    "Make a table with two columns (term, meaning) from the following text.\n\n{text}",
    "Read the text and write down the three most important sentences, word for word.\n\n{text}",
]
QUESTION = [
    "{text}\n\nBased only on the text above, what is its main subject and what does it say about it?",
    "Answer using the passage below. What are the rules or steps it describes?\n\nPassage:\n{text}",
    "Here is a passage:\n\n{text}\n\nQuestion: What would a reader learn from this passage? Answer in one paragraph.",
    "{text}\n\nWrite three questions about this text and answer each of them from the text.",
    "Context:\n{text}\n\nUsing the context, explain the most important idea to a student.",
]
CODE_ABOUT = [
    "Explain what this Python function does, step by step.\n\n```python\n{code}\n```",
    "Add a docstring and comments to the following code.\n\n```python\n{code}\n```",
    "Write unit tests with pytest for this function.\n\n```python\n{code}\n```",
    "Is there a bug or an edge case in this code? Explain.\n\n```python\n{code}\n```",
    "Rewrite this function in a clearer way and explain your changes.\n\n```python\n{code}\n```",
]
CODE_WRITE = [
    "reverses a string", "checks whether a number is prime", "returns the n-th Fibonacci number",
    "counts the words in a text", "merges two sorted lists", "removes duplicates from a list while keeping order",
    "computes the factorial of n", "flattens a nested list", "finds the most common element of a list",
    "converts Celsius to Fahrenheit", "checks whether a string is a palindrome", "computes the mean and median of a list",
    "parses a CSV line into fields", "returns the greatest common divisor of two numbers", "sorts a list of dictionaries by a key",
    "reads a text file and returns its lines", "implements binary search", "transposes a matrix given as a list of lists",
    "validates an email address with a regular expression", "groups words by their first letter",
    "computes the running sum of a list", "finds all anagrams of a word in a list", "implements a stack class",
    "implements a queue with two stacks", "returns the k largest numbers of a list", "counts vowels in a string",
    "converts a Roman numeral to an integer", "checks whether parentheses are balanced", "rotates a list by k places",
    "computes the Levenshtein distance between two strings", "generates all subsets of a set", "implements bubble sort",
    "implements quicksort", "returns the prime factors of n", "formats a number of seconds as hours:minutes:seconds",
]
CODE_LANGS = ["Python", "Python", "Python", "JavaScript", "C", "Java", "Rust", "Go"]
CODE_ASK = [
    "Write a {lang} function that {task}.",
    "Write a {lang} function that {task}. Explain how it works.",
    "How do I write a function in {lang} that {task}? Give an example.",
    "Implement a function that {task} in {lang}, with a short test.",
]
MATH = [
    ("A shop sells pencils for ${a} each and notebooks for ${b} each. Tom buys {n} pencils and {m} "
     "notebooks and pays with a ${p} bill. How much change does he get? Solve step by step."),
    ("A train travels {a} km in {n} hours, then {b} km in {m} hours. What is its average speed over "
     "the whole trip? Show your work."),
    ("A recipe needs {a} grams of flour for {n} people. How much flour is needed for {m} people? "
     "Explain each step."),
    ("Anna has {a} apples. She gives {n} to each of her {m} friends and then buys {b} more. How many "
     "apples does she have now? Think step by step."),
    ("A rectangle is {a} cm long and {b} cm wide. What are its area and its perimeter? If both sides "
     "grow by {n} cm, by how much does the area grow?"),
    ("A worker earns ${a} per hour and works {n} hours a day for {m} days. After paying {b}% tax, "
     "how much does she keep? Show the calculation."),
    ("Solve for x: {a}x + {b} = {p}. Then check your answer."),
    ("The price of a jacket is ${p}. It is discounted by {n}%, and then by another {m}%. What is the "
     "final price? Is that the same as a {s}% discount? Explain."),
    ("A tank holds {p} liters. One pipe fills it at {a} liters per minute and another drains it at "
     "{b} liters per minute. Starting empty, how long until it is full?"),
    ("What is {a} times {b}, plus {p} divided by {n}? Work it out step by step."),
]


def topic_passages(held_out: frozenset = HELD_OUT_TOPICS, max_chars: int = 1800) -> list[str]:
    """Paragraph-aligned chunks of the Python language reference shipped with CPython."""
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        if key in held_out:
            continue
        out += chunks(topics[key], max_chars)
    return out


def chunks(text: str, max_chars: int, min_chars: int = 300) -> list[str]:
    """Consecutive paragraphs joined up to max_chars; pieces under min_chars are dropped."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    out, cur = [], ""
    for p in paras:
        if cur and len(cur) + len(p) + 2 > max_chars:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{p}" if cur else p[:max_chars]
    if cur:
        out.append(cur)
    return [c for c in out if len(c) >= min_chars]


def code_snippets(max_lines: int = 40, min_lines: int = 6) -> list[str]:
    """Source of small pure-Python functions from a few standard-library modules."""
    import bisect, calendar, colorsys, fnmatch, heapq, html, shlex, statistics, string, textwrap  # noqa: E401

    out = []
    for mod in (bisect, calendar, colorsys, fnmatch, heapq, html, shlex, statistics, string, textwrap):
        for _, fn in inspect.getmembers(mod, inspect.isfunction):
            if fn.__module__ != mod.__name__:
                continue
            try:
                src = inspect.getsource(fn)
            except (OSError, TypeError):
                continue
            n = src.count("\n")
            if min_lines <= n <= max_lines:
                out.append(src.rstrip())
    return out


def math_prompt(rng: random.Random) -> str:
    t = rng.choice(MATH)
    v = dict(a=rng.randint(2, 90), b=rng.randint(2, 60), n=rng.randint(2, 12), m=rng.randint(2, 9),
             p=rng.choice([50, 100, 120, 200, 250, 500]), s=rng.randint(10, 40))
    return t.format(**v)


def task_prompts(n: int, answers: list[str] = (), seed: int = 0) -> list[dict]:
    """n prompts of the task kinds above, in a seeded order; `answers` are the target's own texts
    (its chat answers), used as passages alongside the language reference."""
    rng = random.Random(seed)
    passages = topic_passages() + [a.strip() for a in answers if len(a.strip()) >= 600]
    codes = code_snippets()
    kinds = ["summarise", "translate", "extract", "question", "code_about", "code_write", "math"]
    weights = [3, 2, 2, 3, 2, 2, 2]
    out = []
    for i in range(n):
        kind = rng.choices(kinds, weights)[0]
        if kind in ("summarise", "extract", "question"):
            text = rng.choice(passages)
            tpl = rng.choice({"summarise": SUMMARISE, "extract": EXTRACT, "question": QUESTION}[kind])
            prompt = tpl.format(text=text)
        elif kind == "translate":
            text = rng.choice(passages)[:700].rsplit(" ", 1)[0]
            prompt = rng.choice(TRANSLATE).format(text=text, lang=rng.choice(LANGS))
        elif kind == "code_about":
            prompt = rng.choice(CODE_ABOUT).format(code=rng.choice(codes))
        elif kind == "code_write":
            prompt = rng.choice(CODE_ASK).format(lang=rng.choice(CODE_LANGS), task=rng.choice(CODE_WRITE))
        else:
            prompt = math_prompt(rng)
        out.append({"id": i, "kind": kind, "prompt": prompt})
    return out
