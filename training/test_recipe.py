"""Tests of recipe.py: the stage lists are consistent, and the runner skips, resumes and dry-runs
as it says. Plain Python (`make test` runs them with the system python3); nothing is trained."""
import contextlib
import io
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipe  # noqa: E402
from recipe import ROOT, Stage  # noqa: E402


def recipes():
    w, d = Path("/nonexistent/work"), Path("/nonexistent/data")
    yield "train", recipe.train_recipe("python3", w, d, Path(f"{d}2"), Path(f"{d}3"), Path(f"{d}4"))
    yield "eval", recipe.eval_recipe("python3", d)


def writer(python, *paths):
    """A stage command that writes each of `paths` (and nothing else)."""
    code = "import sys; [open(p, 'a').write('x') for p in sys.argv[1:]]"
    return [python, "-c", code] + [str(p) for p in paths]


class StageLists(unittest.TestCase):
    def test_inputs_come_from_earlier_stages_or_the_repo(self):
        for which, stages in recipes():
            made = set()
            for s in stages:
                for p in s.inputs:
                    self.assertTrue(p in made or (not Path(p).is_absolute() and (ROOT / p).exists()),
                                    f"{which}: {s.name} reads {p}, which no earlier stage writes")
                made.update(s.outputs)

    def test_names_and_outputs_are_unique(self):
        for which, stages in recipes():
            names = [s.name for s in stages]
            self.assertEqual(len(names), len(set(names)), which)
            outputs = [p for s in stages for p in s.outputs]
            self.assertEqual(len(outputs), len(set(outputs)), which)

    def test_scripts_exist(self):
        for which, stages in recipes():
            for s in stages:
                for a in s.argv[1:2]:
                    if a.startswith("training/"):
                        self.assertTrue((ROOT / a).is_file(), f"{which}: {s.name} runs {a}")

    def test_every_stage_that_can_be_skipped_says_what_it_writes(self):
        for which, stages in recipes():
            for s in stages:
                self.assertTrue(s.always or s.outputs, f"{which}: {s.name} has no outputs")

    def test_the_recipe_ends_by_shipping_the_mean_of_lm29_and_lm30(self):
        stages = dict(recipes())["train"]
        self.assertEqual(stages[-1].name, "ship")
        self.assertIn("assets/kokichi-tiny/model.safetensors", stages[-1].outputs)
        self.assertIn("/nonexistent/work/tiny-soup30", stages[-1].inputs)


class Runner(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.work = self.dir / "work"
        py = sys.executable
        a, b, c = self.dir / "a", self.dir / "b", self.dir / "c"
        self.stages = [
            Stage("a", writer(py, a), [], [str(a)]),
            Stage("b", writer(py, b), [str(a)], [str(b)]),
            Stage("c", writer(py, c), [], [str(c)]),
        ]

    def tearDown(self):
        self.tmp.cleanup()

    def go(self, **kw):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            recipe.run(self.stages, self.work, **kw)
        return err.getvalue()

    def count(self, name):
        p = self.dir / name
        return len(p.read_text()) if p.exists() else 0

    def test_dry_run_prints_argv_and_runs_nothing(self):
        with mock.patch.object(recipe.subprocess, "run") as run:
            out = self.go(dry_run=True)
        run.assert_not_called()
        for s in self.stages:
            self.assertIn(f"== {s.name}: {recipe.shlex.join(s.argv)}", out)
        self.assertFalse(self.work.exists())
        self.assertEqual([self.count(n) for n in "abc"], [0, 0, 0])

    def test_done_stages_are_skipped_and_force_runs_them(self):
        self.go()
        self.assertEqual([self.count(n) for n in "abc"], [1, 1, 1])
        out = self.go()
        self.assertEqual([self.count(n) for n in "abc"], [1, 1, 1])
        self.assertIn("== b: done, skipped", out)
        self.go(force=True)
        self.assertEqual([self.count(n) for n in "abc"], [2, 2, 2])

    def test_a_stage_cut_short_runs_again(self):
        # Its output is there but the recipe's marker is not: not done.
        self.go()
        recipe.marker(self.work, self.stages[2]).unlink()
        self.go()
        self.assertEqual([self.count(n) for n in "abc"], [1, 1, 2])

    def test_changed_arguments_run_again(self):
        self.go()
        self.stages[2].argv = self.stages[2].argv + [str(self.dir / "c")]
        self.go()
        self.assertEqual(self.count("c"), 3)

    def test_from_runs_that_stage_and_the_readers_of_what_it_rewrites(self):
        self.go()
        self.go(start="a")
        # a runs because it was named, b because it reads a's output, c is done.
        self.assertEqual([self.count(n) for n in "abc"], [2, 2, 1])
        self.go(start="b")
        self.assertEqual([self.count(n) for n in "abc"], [2, 3, 1])

    def test_a_failing_stage_stops_the_run(self):
        self.stages[1].argv = [sys.executable, "-c", "raise SystemExit(3)"]
        with self.assertRaises(SystemExit):
            self.go()
        self.assertEqual([self.count(n) for n in "abc"], [1, 0, 0])
        self.assertFalse(recipe.marker(self.work, self.stages[1]).exists())

    def test_kept_outputs_are_never_run_over(self):
        keep = self.dir / "corpus"
        keep.write_text("x")
        self.stages = [Stage("corpus", writer(sys.executable, keep), [], [str(keep)], keep=True)]
        self.go(force=True)
        self.go(start="corpus")
        self.assertEqual(self.count("corpus"), 1)

    def test_needs_lists_what_earlier_stages_wrote(self):
        self.assertEqual(recipe.needs(self.stages, "b"), [str(self.dir / "a")])
        self.assertEqual(recipe.needs(self.stages, "a"), [])


class CommandLine(unittest.TestCase):
    def test_list_and_dry_run(self):
        with tempfile.TemporaryDirectory() as tmp:
            for argv in (["--list"], ["--dry-run"], ["eval", "--dry-run"], ["--needs", "lm27"]):
                out, err = io.StringIO(), io.StringIO()
                with mock.patch.object(recipe.subprocess, "run") as run, \
                        contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    recipe.main(argv + ["--work", tmp, "--data", f"{tmp}/d", "--data2", f"{tmp}/d2",
                                        "--data3", f"{tmp}/d3", "--data4", f"{tmp}/d4"])
                run.assert_not_called()
                self.assertTrue(out.getvalue() or err.getvalue(), argv)
            self.assertEqual(list(Path(tmp).iterdir()), [])


if __name__ == "__main__":
    unittest.main()
