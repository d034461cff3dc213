"""The modern-English pretraining mixture: what each source keeps, and no test-split movie."""

import bz2
import csv
import io

from fmjax.data.corpora.modern_english import movie_documents, rst_paragraphs, wordnet_glosses
from fmjax.data.corpora.rotten_tomatoes import is_test_movie

RST = """.. SPDX-License-Identifier: GPL-2.0

==============================
How To Write Linux PCI Drivers
==============================

The world of PCI is vast and full of (mostly unpleasant) surprises. See
:ref:`the API <pci-api>` and call ``pci_register_driver()`` first.

.. code-block:: c

   static int probe(struct pci_dev *dev);

    indented literal block that is code and not prose at all

+-------+-------+
| table | cells |
+-------+-------+

Short line.
"""


def test_rst_paragraphs_keep_prose_only():
    paragraphs = rst_paragraphs(RST)
    assert paragraphs == [
        "The world of PCI is vast and full of (mostly unpleasant) surprises. See the API and "
        "call pci_register_driver() first."
    ]


def test_wordnet_glosses_skip_the_license_header():
    data = (
        "  1 This software and database is being provided to you, the LICENSEE\n"
        '00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived; "a thing"\n'
    )
    assert wordnet_glosses(data) == ['that which is perceived; "a thing"']


def test_movie_documents_put_the_plot_first_and_leave_out_test_movies():
    names = [f"movie {i}" for i in range(200)]
    test_movie = next(n for n in names if is_test_movie(n))
    train_movie = next(n for n in names if not is_test_movie(n))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    writer.writerow(["fresh", "A  joy.", train_movie, "True"])
    writer.writerow(["plot", "Two friends travel.", train_movie, "True"])
    writer.writerow(["rotten", "Dull.", train_movie, "True"])
    writer.writerow(["fresh", "Never seen in pretraining.", test_movie, "True"])
    writer.writerow(["plot", "Nor this plot.", test_movie, "True"])
    movies = movie_documents(bz2.compress(out.getvalue().encode()))
    assert movies == {train_movie: ["Two friends travel.", "A joy.", "Dull."]}
