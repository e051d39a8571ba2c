#!/usr/bin/env python3
"""Build the benchmark workload data/pairs.jsonl from The Rust Programming Language book.

The source is the HTML build of the book that ships with the Rust toolchain's
rust-docs component (dual-licensed MIT OR Apache-2.0), so the workload can be
regenerated offline and redistributed.

What it does:

* Parses every chapter page (ch*.html) and appendix page (appendix-*.html) of
  the book, skipping redirect stubs (pages with <meta http-equiv="refresh">),
  print.html, toc.html, 404.html, title-page.html, SUMMARY.html and the
  2018-edition / first-edition / second-edition directories.
* Within each page's <main>, splits the content into sections at every
  h1/h2/h3 heading; a section's paragraphs are the <p> and <li> texts under it
  (code blocks <pre> dropped, inline <code> kept as plain words, whitespace
  collapsed, figure/listing captions and paragraphs under 8 words dropped).
* Builds one query per selected section from its heading: the heading text as
  a keyword query, or, for half of the headings where a question reads
  naturally, "how do I <verb> ...?" (headings starting with a gerund) or
  "what is/are <heading>?" (short noun-phrase headings).
* For each query writes 8 pairs (in shuffled order): 2-3 passages from the
  query's own section, 2-3 from sibling sections of the same chapter, and the
  rest from random sections of other chapters. A passage is 1-6 consecutive
  paragraphs of one section; its target length is drawn from a log-normal
  (median 75 words) clipped to 10..450 words.
* Groups (8 consecutive lines sharing a query) are written in shuffled order.

Everything random comes from random.Random(SEED), so the output is
byte-for-byte reproducible for a given book.

Usage:
    python3 scripts/make_workload.py [--book DIR] [--out data/pairs.jsonl] [--pairs 2400]
"""

import argparse
import html.parser
import json
import math
import os
import random
import re

SEED = 20250515  # fixed seed: changing it changes the whole workload

DEFAULT_BOOK = ("/root/.rustup/toolchains/1.95.0-x86_64-unknown-linux-gnu/"
                "share/doc/rust/html/book")

PAIRS_PER_QUERY = 8
MIN_PARA_WORDS = 8
MIN_PASSAGE_WORDS = 10
MAX_PASSAGE_WORDS = 450
MAX_PASSAGE_PARAS = 6
TARGET_MEDIAN_WORDS = 75
TARGET_SIGMA = 0.8
QUESTION_RATE = 0.5

SKIP_PAGES = {"print.html", "toc.html", "404.html", "title-page.html",
              "SUMMARY.html", "index.html"}
PAGE_RE = re.compile(r"^(ch\d\d-\d\d-.*|appendix-\d\d.*)\.html$")
CAPTION_RE = re.compile(r"^(Figure|Listing) \d+-\d+:")
SKIP_TAGS = {"pre", "script", "style", "svg", "template", "button",
             "figcaption", "nav"}

# Gerunds that start section headings, mapped to the base verb used in the
# "how do I ...?" question form. Gerunds used as nouns (Shadowing, Hashing,
# Troubleshooting, ...) are deliberately absent.
GERUNDS = {
    "accepting": "accept", "accessing": "access", "adding": "add",
    "allowing": "allow", "applying": "apply", "attempting": "attempt",
    "bringing": "bring", "building": "build", "calling": "call",
    "capturing": "capture", "checking": "check", "choosing": "choose",
    "clarifying": "clarify", "cloning": "clone", "comparing": "compare",
    "controlling": "control", "creating": "create", "customizing": "customize",
    "declaring": "declare", "defining": "define", "depending": "depend",
    "deprecating": "deprecate", "dereferencing": "dereference",
    "destructuring": "destructure", "disambiguating": "disambiguate",
    "enabling": "enable", "encoding": "encode", "enforcing": "enforce",
    "executing": "execute", "exporting": "export", "exposing": "expose",
    "extending": "extend", "extracting": "extract", "fixing": "fix",
    "following": "follow", "generating": "generate", "grouping": "group",
    "handling": "handle", "ignoring": "ignore", "implementing": "implement",
    "importing": "import", "improving": "improve", "increasing": "increase",
    "indexing": "index", "inferring": "infer", "installing": "install",
    "iterating": "iterate", "leveraging": "leverage", "listening": "listen",
    "looking": "look", "making": "make", "managing": "manage",
    "matching": "match", "moving": "move", "performing": "perform",
    "preventing": "prevent", "printing": "print", "processing": "process",
    "propagating": "propagate", "providing": "provide",
    "publishing": "publish", "quitting": "quit", "re-exporting": "re-export",
    "reading": "read", "receiving": "receive", "redirecting": "redirect",
    "removing": "remove", "returning": "return", "running": "run",
    "saving": "save", "sending": "send", "separating": "separate",
    "setting": "set", "sharing": "share", "showing": "show",
    "simulating": "simulate", "slicing": "slice", "splitting": "split",
    "starting": "start", "storing": "store", "structuring": "structure",
    "testing": "test", "transferring": "transfer", "treating": "treat",
    "updating": "update", "using": "use", "validating": "validate",
    "waiting": "wait", "working": "work", "writing": "write",
    # second verbs of "X-ing and Y-ing" headings
    "uninstalling": "uninstall", "instantiating": "instantiate",
    "annotating": "annotate", "modifying": "modify", "responding": "respond",
}
# Words that make a heading a sentence ("Matches Are Exhaustive") or a
# fragment that does not take a "what is" / "how do I" frame.
FINITE_VERBS = {"is", "are", "can", "drops", "has", "have", "contain"}
NO_WHAT_FIRST = {"a", "an", "our", "from", "to", "when", "all", "final", "in",
                 "more", "who", "how", "why", "where", "what", "putting",
                 "getting", "understanding", "programming", "dangling"}
NOT_NOUN_PHRASE = {"of", "for", "with", "in", "that", "who", "using", "to", "on",
                   "vs.", "without", "as", "your", "by", "between"}
# Short headings where "what is/are ...?" would not read naturally.
NO_QUESTION = {"students", "companies", "installation", "troubleshooting",
               "teams of developers", "open source developers", "source code",
               "project directory setup", "rust program basics",
               "maintenance time", "other slices", "modules cheat sheet",
               "useful development tools", "command line notation",
               "test organization", "relationships", "refactoring", "summary",
               "introduction", "appendix", "methods", "parameters"}
GENERIC_HEADINGS = {"summary", "introduction", "appendix", "methods",
                    "relationships", "refactoring"}


class PageParser(html.parser.HTMLParser):
    """Collects (level, heading, [paragraph, ...]) from a page's <main>."""

    def __init__(self):
        super().__init__(convert_charrefs=True)  # decodes &amp; &lt; &#x27; ...
        self.redirect = False
        self.in_main = 0
        self.skip = []          # stack of open skipped tags (pre, svg, ...)
        self.heading = None     # [level, [text pieces]] while inside h1-h3
        self.blocks = []        # stack of open <p>/<li>: [tag, [text pieces]]
        self.sections = []      # [(level, heading, [paragraphs])]

    def handle_starttag(self, tag, attrs):
        if tag == "meta" and (dict(attrs).get("http-equiv") or "").lower() == "refresh":
            self.redirect = True
        if tag == "main":
            self.in_main += 1
            return
        if not self.in_main:
            return
        if tag in SKIP_TAGS:
            self.skip.append(tag)
            return
        if self.skip:
            return
        if tag in ("h1", "h2", "h3"):
            self.heading = [tag, []]
        elif tag in ("p", "li"):
            self.blocks.append([tag, []])

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag in SKIP_TAGS and self.skip and self.skip[-1] == tag:
            self.skip.pop()

    def handle_endtag(self, tag):
        if tag == "main":
            self.in_main -= 1
            return
        if not self.in_main:
            return
        if self.skip:
            if tag == self.skip[-1]:
                self.skip.pop()
            return
        if tag in ("h1", "h2", "h3") and self.heading is not None:
            text = collapse("".join(self.heading[1]))
            self.sections.append((self.heading[0], text, []))
            self.heading = None
        elif tag in ("p", "li") and self.blocks and self.blocks[-1][0] == tag:
            _, pieces = self.blocks.pop()
            text = collapse("".join(pieces))
            if (self.sections and len(text.split()) >= MIN_PARA_WORDS
                    and not CAPTION_RE.match(text)):
                self.sections[-1][2].append(text)

    def handle_data(self, data):
        if not self.in_main or self.skip:
            return
        if self.heading is not None:
            self.heading[1].append(data)
        elif self.blocks:
            self.blocks[-1][1].append(data)


def collapse(text):
    return " ".join(text.split())


def chapter_of(filename):
    """ch04-02-references.html -> 'ch04'; appendix-03-x.html -> 'appendix-03'."""
    m = re.match(r"(ch\d\d|appendix-\d\d)", filename)
    return m.group(1)


def load_sections(book):
    """Returns a list of dicts: chapter, page, level, heading, parent, paras."""
    sections = []
    for name in sorted(os.listdir(book)):
        path = os.path.join(book, name)
        if name in SKIP_PAGES or not PAGE_RE.match(name) or not os.path.isfile(path):
            continue
        parser = PageParser()
        with open(path, encoding="utf-8") as f:
            parser.feed(f.read())
        parser.close()
        if parser.redirect:
            continue
        parents = {}
        for level, heading, paras in parser.sections:
            parents[level] = heading
            parent = parents.get("h2") if level == "h3" else parents.get("h1")
            sections.append({"chapter": chapter_of(name), "page": name,
                             "level": level, "heading": heading,
                             "parent": parent, "paras": paras})
    return sections


def clean_heading(sec):
    """Heading text usable as a stand-alone keyword query."""
    h = re.sub(r"^Appendix [A-Z]\s*[:\-]\s*", "", sec["heading"])
    if h.startswith("In ") and sec["parent"]:
        # "In Struct Definitions" only makes sense with its parent heading.
        h = "%s in %s" % (sec["parent"], h[3:])
    return h


def lower_words(text):
    """Lower-cases ordinary capitalised words (including hyphenated ones such
    as Unit-Like); keeps code-like tokens (RefCell<T>, HashMap, I/O) as is."""
    out = []
    for w in text.split():
        if re.fullmatch(r"[A-Za-z][a-z’']*(-[A-Za-z][a-z’']*)*[,:?]?", w):
            w = w.lower()
        out.append(w)
    return " ".join(out)


def question_form(heading):
    """A natural question for the heading, or None where none reads well."""
    words = heading.split()
    low = [w.lower() for w in words]
    if heading.endswith("?"):
        return lower_words(heading)
    if (any(c in heading for c in ":!,\"“”") or len(words) > 9
            or FINITE_VERBS & set(low) or heading.lower() in NO_QUESTION):
        return None
    if low[:2] == ["how", "to"] and len(words) > 2:
        return "how do I %s?" % lower_words(" ".join(words[2:]))
    if low[0] in GERUNDS and len(words) > 1:
        # "Building and Running a Cargo Project" -> "build and run a cargo project"
        verbs = [GERUNDS[low[0]]]
        for i in range(1, len(words)):
            prev = low[i - 1]
            prev2 = low[i - 2] if i >= 2 else ""
            if low[i] in GERUNDS and (prev in ("and", "or") or
                                      (prev.endswith("ly") and prev2 in ("and", "or"))):
                verbs.append(GERUNDS[low[i]])
            else:
                verbs.append(lower_words(words[i]))
        text = " ".join(verbs)
        text = re.sub(r"\bour\b", "my", text)
        return "how do I %s?" % text
    # "what is/are X?" only for short noun phrases: at most 4 words, no
    # prepositions or relative clauses ("Default for Default Values").
    if (len(words) > 4 or low[0] in NO_WHAT_FIRST or low[0].endswith("ing")
            or NOT_NOUN_PHRASE & set(low)):
        return None
    last = re.sub(r"[^a-z]", "", low[-1])
    plural = ("and" in low
              or (last.endswith("s") and not last.endswith(("ss", "us", "is"))))
    return "what %s %s?" % ("are" if plural else "is", lower_words(heading))


def passage_from(rng, paras):
    """1..6 consecutive paragraphs whose word count is close to a drawn target."""
    target = math.exp(rng.gauss(math.log(TARGET_MEDIAN_WORDS), TARGET_SIGMA))
    target = min(MAX_PASSAGE_WORDS, max(MIN_PASSAGE_WORDS, target))
    lens = [len(p.split()) for p in paras]
    start = rng.randrange(len(paras))
    end = start + 1
    words = lens[start]
    while end - start < MAX_PASSAGE_PARAS and words < target:
        if end < len(paras):
            nxt = end
        elif start > 0:
            nxt = start - 1
        else:
            break
        new = words + lens[nxt]
        if new > MAX_PASSAGE_WORDS:
            break
        if words >= MIN_PASSAGE_WORDS and abs(new - target) >= abs(words - target):
            break
        if nxt == end:
            end += 1
        else:
            start -= 1
        words = new
    text = " ".join(paras[start:end])
    if words > MAX_PASSAGE_WORDS:  # a single very long paragraph: cut it
        text = " ".join(text.split()[:MAX_PASSAGE_WORDS])
    return text


def pick_passages(rng, candidates, count, seen, tries=40):
    """Draws up to `count` new passages from a list of sections, one section
    per draw, avoiding passages already in `seen`."""
    out = []
    for _ in range(tries):
        if len(out) == count or not candidates:
            break
        sec = rng.choice(candidates)
        p = passage_from(rng, sec["paras"])
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def build(book, n_pairs):
    rng = random.Random(SEED)
    sections = [s for s in load_sections(book) if s["paras"]]
    by_chapter = {}
    for s in sections:
        by_chapter.setdefault(s["chapter"], []).append(s)
    chapters = sorted(by_chapter)

    # Query candidates: a section with >= 2 paragraphs, a non-generic heading
    # that is unique in the book, and at least one sibling section.
    candidates, used = [], set()
    for s in sections:
        h = clean_heading(s)
        key = h.casefold()
        if (len(s["paras"]) < 2 or key in GENERIC_HEADINGS or key in used
                or len(by_chapter[s["chapter"]]) < 2):
            continue
        used.add(key)
        candidates.append((s, h))

    n_groups = -(-n_pairs // PAIRS_PER_QUERY)
    if n_groups > len(candidates):
        raise SystemExit("only %d distinct queries available, %d needed"
                         % (len(candidates), n_groups))
    chosen = rng.sample(candidates, n_groups)

    groups = []
    for sec, heading in chosen:
        query = heading
        q = question_form(heading)
        if q is not None and rng.random() < QUESTION_RATE:
            query = q
        seen = set()
        own = pick_passages(rng, [sec], rng.choice([2, 3]), seen)
        siblings = [s for s in by_chapter[sec["chapter"]] if s is not sec]
        sib = pick_passages(rng, siblings, rng.choice([2, 3]), seen)
        neg = []
        while len(own) + len(sib) + len(neg) < PAIRS_PER_QUERY:
            other = rng.choice([c for c in chapters if c != sec["chapter"]])
            neg += pick_passages(rng, by_chapter[other], 1, seen)
        passages = own + sib + neg
        rng.shuffle(passages)
        groups.append([(query, p) for p in passages])

    rng.shuffle(groups)
    pairs = [pair for g in groups for pair in g][:n_pairs]
    return pairs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--book", default=DEFAULT_BOOK,
                    help="directory of the book's HTML (default: %(default)s)")
    ap.add_argument("--out", default="data/pairs.jsonl",
                    help="output JSONL file (default: %(default)s)")
    ap.add_argument("--pairs", type=int, default=2400,
                    help="number of (query, passage) lines (default: %(default)s)")
    args = ap.parse_args()
    pairs = build(args.book, args.pairs)
    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        for q, p in pairs:
            f.write(json.dumps({"query": q, "passage": p}, ensure_ascii=False) + "\n")
    print("wrote %d pairs (%d queries) to %s"
          % (len(pairs), len({q for q, _ in pairs}), args.out))


if __name__ == "__main__":
    main()
