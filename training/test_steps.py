"""Tests of steps.py, the markers that let a cut `make train-tiny` restart where it stopped.
Plain Python (`make test` runs them with the system python3)."""
import argparse
import os
import tempfile
import unittest
from pathlib import Path

from steps import clear_done, done_before, mark_done, records_digest, step_key, unfinished_append


class StepsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.root = Path(self.dir.name)
        self.model = self.root / "model"
        self.model.mkdir()
        (self.model / "weights.bin").write_bytes(b"0123")
        self.marker = self.root / "out" / "done.json"

    def tearDown(self):
        self.dir.cleanup()

    def args(self, **kw):
        base = dict(codec=self.model, out=self.root / "out", seed=3, splits=["train"], workers=2)
        return argparse.Namespace(**{**base, **kw})

    def test_finished_step_is_kept_only_for_the_same_call(self):
        key = step_key(self.args(), [self.model])
        self.assertFalse(done_before(self.marker, key), "no marker yet")
        mark_done(self.marker, key)
        self.assertTrue(done_before(self.marker, step_key(self.args(), [self.model])))
        self.assertFalse(done_before(self.marker, step_key(self.args(seed=4), [self.model])), "another seed")
        self.assertFalse(done_before(self.marker, step_key(self.args(splits=["eval"]), [self.model])))
        self.assertFalse(done_before(self.marker, step_key(self.args(), [])), "other inputs")

    def test_pace_arguments_do_not_count(self):
        mark_done(self.marker, step_key(self.args(workers=2), [self.model]))
        self.assertTrue(done_before(self.marker, step_key(self.args(workers=1), [self.model])))

    def test_a_changed_input_model_redoes_the_step(self):
        mark_done(self.marker, step_key(self.args(), [self.model]))
        (self.model / "weights.bin").write_bytes(b"012345")
        self.assertFalse(done_before(self.marker, step_key(self.args(), [self.model])), "size changed")
        mark_done(self.marker, step_key(self.args(), [self.model]))
        st = (self.model / "weights.bin").stat()
        os.utime(self.model / "weights.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        self.assertFalse(done_before(self.marker, step_key(self.args(), [self.model])), "rewritten")
        (self.model / "extra.json").write_text("{}")
        self.assertFalse(done_before(self.marker, step_key(self.args(), [self.model])), "a file added")

    def test_cleared_or_damaged_marker_is_not_done(self):
        key = step_key(self.args(), [self.model])
        mark_done(self.marker, key)
        clear_done(self.marker)
        self.assertFalse(self.marker.exists())
        clear_done(self.marker)  # already gone: no error
        self.marker.write_text('{"seed": ')
        self.assertFalse(done_before(self.marker, key), "a marker cut while written")
        self.assertEqual(list(self.marker.parent.glob("*.tmp")), [])

    def test_records_digest_tells_records_apart(self):
        recs = [{"task": "plus", "question": "what is one plus two", "answer": "three"}]
        self.assertEqual(records_digest(recs)[0], 1)
        self.assertEqual(records_digest(recs), records_digest([dict(reversed(list(recs[0].items())))]))
        self.assertNotEqual(records_digest(recs), records_digest([{**recs[0], "answer": "four"}]))
        self.assertNotEqual(records_digest(recs), records_digest(recs + recs))

    def test_only_a_cut_append_is_drawn_again(self):
        corpus = self.root / "corpus"
        corpus.mkdir()
        self.assertFalse(unfinished_append(corpus, 100), "a corpus without markers is never cut back")
        mark_done(corpus / "init.done.json", {"train": 0, "eval": 600})
        self.assertTrue(unfinished_append(corpus, 0), "no append finished")
        mark_done(corpus / "train-0.done.json", {"start": 0, "train": 100})
        self.assertFalse(unfinished_append(corpus, 0), "the append from 0 finished")
        self.assertTrue(unfinished_append(corpus, 100), "the one from 100 did not")
        mark_done(corpus / "train-200.done.json", {"start": 200, "train": 100})
        self.assertFalse(unfinished_append(corpus, 100), "a later append finished after it")
        mark_done(corpus / "init.done.json", {"train": 16000, "eval": 600})
        self.assertFalse(unfinished_append(corpus, 300), "the first call's own questions reach past it")


if __name__ == "__main__":
    unittest.main()
