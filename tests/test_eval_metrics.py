"""Evaluation metrics: hand-computed cases, the examples their authors published, and the outputs of the COCO
caption evaluation code (coco-caption, as packaged by pycocoevalcap 1.2) that the captioning benchmarks use."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import random
import shutil
import subprocess
import sys

import pytest

from pengi_search.evaluation.java_metrics import meteor, spice
from pengi_search.evaluation.metrics import (
    average_precision_at_k,
    bleu,
    cider_d,
    confusion_matrix,
    lcs_length,
    mean,
    ngram_matches,
    recall_at_k,
    rouge_l,
    tokenize,
    top_k_accuracy,
)

HAVE_COCO = importlib.util.find_spec("pycocoevalcap") is not None
HAVE_JAVA = shutil.which("java") is not None
needs_coco = pytest.mark.skipif(not HAVE_COCO, reason="pycocoevalcap not installed (pip install '.[eval]')")
needs_java = pytest.mark.skipif(not (HAVE_COCO and HAVE_JAVA), reason="needs Java and pycocoevalcap")


def tok(*texts: str) -> list[list[str]]:
    return [tokenize(t) for t in texts]


# -- tokenisation ------------------------------------------------------------------------------------------------

# What Stanford's PTBTokenizer (CoreNLP 3.4.1, run by coco-caption) gives, with coco-caption's punctuation removal.
PTB_CASES = {
    "A dog barks repeatedly, while rain falls.": "a dog barks repeatedly while rain falls",
    "Someone's footsteps on a wooden floor!": "someone 's footsteps on a wooden floor",
    "A man can't start the engine; it sputters.": "a man ca n't start the engine it sputters",
    "High-pitched beeps (three of them) and a low hum...": "high-pitched beeps -lrb- three of them -rrb- and a low hum",
    '"Hello" says a woman -- then silence?': "hello says a woman then silence",
    "The car\u2019s engine revs at 3,000 rpm: loud.": "the car 's engine revs at 3,000 rpm loud",
    "Birds' chirping & wind, 50% of it": "birds chirping & wind 50 % of it",
    "They're talking and we'll listen, wow!!!": "they 're talking and we 'll listen wow !!!",
    "[loud] and/or {soft}, 2.5 seconds": "-lsb- loud -rsb- and/or -lcb- soft -rcb- 2.5 seconds",
}


def test_tokenize_like_coco_caption():
    for text, expected in PTB_CASES.items():
        assert tokenize(text) == expected.split(), text


@needs_java
def test_tokenize_equals_the_stanford_tokenizer():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with contextlib.redirect_stderr(io.StringIO()):
        out = PTBTokenizer().tokenize({i: [{"caption": text}] for i, text in enumerate(PTB_CASES)})
    for i, text in enumerate(PTB_CASES):
        assert tokenize(text) == out[i][0].split(), text


# -- BLEU --------------------------------------------------------------------------------------------------------

# Papineni, Roukos, Ward and Zhu, "BLEU: a Method for Automatic Evaluation of Machine Translation", ACL 2002,
# section 2.1 (Example 1 and Example 2), with the modified n-gram precisions the paper states.
BLEU_REFERENCES = [
    "It is a guide to action that ensures that the military will forever heed Party commands.",
    "It is the guiding principle which guarantees the military forces always being under the command of the Party.",
    "It is the practical guide for the army always to heed the directions of the party.",
]
BLEU_CANDIDATE_1 = "It is a guide to action which ensures that the military always obeys the commands of the party."
BLEU_CANDIDATE_2 = "It is to insure the troops forever hearing the activity guidebook that party direct."


def test_modified_precisions_of_the_bleu_paper():
    refs = tok(*BLEU_REFERENCES)
    assert ngram_matches(tokenize(BLEU_CANDIDATE_1), refs, 1) == (17, 18)
    assert ngram_matches(tokenize(BLEU_CANDIDATE_2), refs, 1) == (8, 14)
    assert ngram_matches(tokenize(BLEU_CANDIDATE_1), refs, 2) == (10, 17)
    assert ngram_matches(tokenize(BLEU_CANDIDATE_2), refs, 2) == (1, 13)
    # Example 2: "the" is clipped to its count in the reference that has it most often.
    the_refs = tok("The cat is on the mat.", "There is a cat on the mat.")
    assert ngram_matches(tokenize("the the the the the the the."), the_refs, 1) == (2, 7)


def test_bleu_by_hand():
    # 1-grams 3/4, 2-grams 2/3, 3-grams 1/2, 4-grams 0/1; 4 words against 3: no brevity penalty.
    scores = bleu(tok("a dog barks loudly"), [tok("a dog barks")])
    assert scores == pytest.approx([0.75, math.sqrt(0.75 * 2 / 3), (0.75 * 2 / 3 * 0.5) ** (1 / 3), 0.0])
    # Too short: every precision is 1 but the brevity penalty is exp(1 - 3/2); no 3-gram at all scores 0.
    short = bleu(tok("a dog"), [tok("a dog barks", "the dog barked at night")])
    assert short == pytest.approx([math.exp(-0.5), math.exp(-0.5), 0.0, 0.0])


def test_bleu_is_corpus_level():
    # Counts and lengths are summed before dividing: 3/4 and 1/2 make 4/6 unigrams, not the mean 5/8.
    scores = bleu(tok("a dog barks loudly", "rain falls"), [tok("a dog barks howls"), tok("rain stops")])
    assert scores[0] == pytest.approx(4 / 6)


# -- ROUGE-L -----------------------------------------------------------------------------------------------------


def test_rouge_l_example_of_the_rouge_paper():
    # Lin, "ROUGE: A Package for Automatic Evaluation of Summaries", ACL workshop 2004, section 3.1: against S1,
    # S2 scores 3/4 and S3 scores 2/4 (equal precision and recall, so beta does not matter).
    s1, s2, s3 = tok("police killed the gunman", "police kill the gunman", "the gunman kill police")
    assert lcs_length(s1, s2) == 3 and lcs_length(s1, s3) == 2
    assert rouge_l([s2, s3], [[s1], [s1]]) == pytest.approx([0.75, 0.5])


def test_rouge_l_by_hand():
    # LCS 2: precision 2/2, recall 2/4; F with beta 1.2 = (1 + 1.44) * 1 * 0.5 / (0.5 + 1.44 * 1).
    assert rouge_l(tok("the gunman"), [tok("police killed the gunman")]) == pytest.approx([2.44 * 0.5 / 1.94])
    # The best precision and the best recall are taken over the references separately.
    got = rouge_l(tok("a dog barks"), [tok("a dog", "a big dog barks at night")])
    precision, recall = 1.0, 2 / 2  # "a dog barks" is all in the second; "a dog" is all of the first
    assert got == pytest.approx([2.44 * precision * recall / (recall + 1.44 * precision)])
    assert rouge_l(tok("rain"), [tok("a dog")]) == [0.0]


# -- CIDEr-D -----------------------------------------------------------------------------------------------------


def test_cider_d_by_hand():
    # Two items, each n-gram in one item's references only: idf = log(2) - log(1) for all of them.
    # Item 1 repeats its reference: cosine 1 for 1-, 2- and 3-grams, no 4-gram: 10 * 3/4.
    # Item 2, "rain" against "rain falls": unigram cosine log2^2 / (log2 * log2 * sqrt 2) = 1/sqrt 2, no bigram;
    # lengths (in bigrams) 0 and 1: penalty exp(-1 / (2 * 6^2)). Score 10 * (1/sqrt 2) * penalty / 4.
    scores = cider_d(tok("a dog barks", "rain"), [tok("a dog barks"), tok("rain falls")])
    assert scores == pytest.approx([7.5, 2.5 * math.exp(-1 / 72) / math.sqrt(2)])


def test_cider_d_ignores_what_every_item_says():
    # An n-gram in the references of every item has idf 0: "a" and "sound" say nothing about which item it is.
    scores = cider_d(tok("a sound", "a sound"), [tok("a sound of rain"), tok("a sound of a bell")])
    assert scores == pytest.approx([0.0, 0.0])


def test_cider_d_clips_repeated_words():
    # Repeating a matching word does not raise the score beyond saying it once ("-D": clipped term frequencies).
    once = cider_d(tok("dog", "cat"), [tok("dog barks"), tok("cat meows")])[0]
    many = cider_d(tok("dog dog dog", "cat"), [tok("dog barks"), tok("cat meows")])[0]
    assert many < once


# -- reference values of the COCO caption evaluation code ----------------------------------------------------

COCO_REFERENCES = [
    [
        "A dog barks repeatedly while rain falls.",
        "Rain falls on a roof as a dog barks.",
        "a dog is barking in the rain",
    ],
    ["A church bell rings several times.", "Bells ring loudly in the distance.", "a bell is ringing"],
    ["Water runs from a tap into a sink.", "A faucet is running water.", "water is flowing from a tap"],
    ["Birds sing while cars pass by on a road.", "cars drive past as birds chirp", "birds chirping and traffic noise"],
]
COCO_CANDIDATES = ["a dog barks in the rain", "a bell rings", "water is running from a faucet", "a car passes by"]
# pycocoevalcap 1.2 (Bleu(4), Rouge(), Cider(), Meteor()) on these captions, tokenised as above and joined by
# spaces. Its CIDEr-D code is by Vedantam et al., the metric's authors; METEOR is their jar (Denkowski and Lavie,
# METEOR 1.5). BLEU-4 is 5.36e-05 there: its smoothing constant instead of 0 when no 4-gram matches.
COCO_BLEU = [0.7640512796879996, 0.6595218946166825, 0.4072311377230162]
COCO_ROUGE_L = [0.7587064676616916, 0.6288659793814433, 0.6666666666666666, 0.14386792452830188]
COCO_CIDER_D = [3.1499195199029613, 1.439755387005013, 2.2883221818057162, 0.13335360270602023]
COCO_METEOR = 0.29855578828060486


def test_against_the_coco_caption_outputs():
    candidates, references = tok(*COCO_CANDIDATES), [tok(*refs) for refs in COCO_REFERENCES]
    assert bleu(candidates, references) == pytest.approx([*COCO_BLEU, 0.0], abs=1e-9)
    assert rouge_l(candidates, references) == pytest.approx(COCO_ROUGE_L, abs=1e-12)
    assert cider_d(candidates, references) == pytest.approx(COCO_CIDER_D, abs=1e-12)
    assert mean(cider_d(candidates, references)) == pytest.approx(1.7528376728549275, abs=1e-12)


@needs_java
@pytest.mark.slow  # the METEOR jar loads a 60 MB paraphrase table: a few seconds
def test_meteor_against_the_coco_caption_output():
    joined = [" ".join(t) for t in tok(*COCO_CANDIDATES)]
    refs = [[" ".join(t) for t in tok(*r)] for r in COCO_REFERENCES]
    assert meteor(joined, refs).value == pytest.approx(COCO_METEOR, abs=1e-12)


def test_java_metrics_say_why_they_are_missing(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    got = meteor(["a dog"], [["a dog barks"]])
    assert got.value is None and "Java" in (got.unavailable or "")
    assert spice(["a dog"], [["a dog barks"]]).value is None


@needs_java
def test_spice_without_stanford_corenlp_says_how_to_get_it():
    from pengi_search.evaluation import java_metrics

    folder, _ = java_metrics.scorer_folder("pycocoevalcap.spice.spice")
    if all((folder / "lib" / name).is_file() for name in java_metrics.CORENLP_JARS):
        pytest.skip("Stanford CoreNLP is installed here")
    got = spice(["a dog"], [["a dog barks"]])
    assert got.value is None and "get_stanford_models" in (got.unavailable or "")


@needs_coco
def test_agrees_with_pycocoevalcap_on_random_corpora():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    rng = random.Random(7)
    words = tokenize("a dog barks in the rain while cars pass by and birds sing loudly water runs from tap")

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))

    for _ in range(20):
        n = rng.randint(2, 6)
        refs = {i: [sentence() for _ in range(rng.randint(1, 5))] for i in range(n)}
        cands = {i: [sentence()] for i in range(n)}
        candidates, references = tok(*(cands[i][0] for i in range(n))), [tok(*refs[i]) for i in range(n)]
        with contextlib.redirect_stdout(io.StringIO()):
            coco_bleu, _ = Bleu(4).compute_score(refs, cands)
        for ours, theirs in zip(bleu(candidates, references), coco_bleu, strict=True):
            assert ours == pytest.approx(theirs, abs=1e-6) or (ours == 0 and theirs < 1e-3)
        assert cider_d(candidates, references) == pytest.approx(list(Cider().compute_score(refs, cands)[1]), abs=1e-9)
        assert rouge_l(candidates, references) == pytest.approx(list(Rouge().compute_score(refs, cands)[1]), abs=1e-12)


# -- retrieval and classification --------------------------------------------------------------------------------


def test_recall_and_average_precision_by_hand():
    ranked = ["b", "a", "c", "d"]
    assert [recall_at_k(ranked, {"a"}, k) for k in (1, 2, 4)] == [0.0, 1.0, 1.0]
    assert average_precision_at_k(ranked, {"a"}, 10) == 0.5  # one relevant item at rank 2
    assert average_precision_at_k(ranked, {"e"}, 10) == 0.0
    # Relevant at ranks 1 and 3 of three relevant items: (1/1 + 2/3) / 3.
    assert average_precision_at_k(["x", "b", "y", "c"], {"x", "y", "z"}, 10) == pytest.approx((1 + 2 / 3) / 3)
    # Only the first k count, and the denominator is min(relevant, k).
    assert average_precision_at_k(["b", "x", "y"], {"x", "y", "z"}, 2) == pytest.approx((1 / 2) / 2)
    assert mean([]) is None


def test_top_k_accuracy_and_confusion_by_hand():
    assert top_k_accuracy([1, 2, 4, None], 1) == 0.25
    assert top_k_accuracy([1, 2, 4, None], 3) == 0.5
    pairs = [("dog", "dog"), ("dog", "cat"), ("cat", "cat"), ("bird", "cat")]
    assert confusion_matrix(pairs, ["dog", "cat", "bird"]) == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_the_metrics_import_no_database_numpy_or_faiss():
    """The metrics are plain Python over lists: scoring a report (`eval compare`, a script) must not pay for the
    database layer, numpy or FAISS, as it did while they took their tie rule from `ranking`."""
    script = "import json, sys, pengi_search.evaluation.metrics; print(json.dumps(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert not {"sqlalchemy", "numpy", "faiss", "torch"} & {name.split(".")[0] for name in json.loads(loaded)}
