"""A tiny package under test: parse and compare semantic versions."""


def parse(text):
    core = text.split("+", 1)[0].split("-", 1)[0]
    parts = core.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError("not a semantic version: %r" % text)
    return tuple(int(p) for p in parts)


def newer(a, b):
    return parse(a) > parse(b)
