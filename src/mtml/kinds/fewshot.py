"""Kind `fewshot`: N-way K-shot classification on one dataset, with cross-domain test sets.

Manifests: `val.parquet`, `test.parquet` (the dataset's val and test classes) and
`cross-<dataset>.parquet` (each cross-domain dataset's test classes).
"""

from __future__ import annotations

from mtml.errors import UserError
from mtml.kinds import Kind, ManifestSpec
from mtml.utils import derive_seed


class FewShot(Kind):
    name = "fewshot"
    fewshot_protocol = True

    def check_run(self, run):
        super().check_run(run)
        exp = run.experiment
        if exp.train_ways != exp.ways and not run.cls.any_ways:
            raise UserError(f"params key 'experiments.{exp.name}.train_ways' is {exp.train_ways} but ways is "
                            f"{exp.ways}, and method {run.method!r} ({run.cls.algorithm}) has a {exp.ways}-way "
                            f"head; remove train_ways, or use a method without a head (protonet, matchingnet)")

    def manifests(self, study, exp) -> list[ManifestSpec]:
        n_val, n_test = exp.training["val_episodes"], exp.evaluation["episodes"]
        plan = [("val.parquet", exp.dataset, "val", "val", n_val),
                ("test.parquet", exp.dataset, "test", "test", n_test)]
        plan += [(f"cross-{ds}.parquet", ds, "test", "cross-domain", n_test) for ds in exp.cross_domain]
        # Seeds depend on the episode settings, not on the method: all methods share them.
        specs = [ManifestSpec(f, ds, split, role, n,
                              derive_seed(study.seed, exp.name, f, exp.ways, exp.shots, exp.queries))
                 for f, ds, split, role, n in plan]
        if exp.config.get("test_episodes"):  # an external episode list replaces the sampled one
            from mtml.episodes.external import count_episodes

            n = count_episodes(exp.config["test_episodes"], f"experiments.{exp.name}.test_episodes")
            specs[1] = ManifestSpec("test.parquet", exp.dataset, "test", "test", n, 0)
        return specs

    def build_manifest(self, exp, spec, data):
        from mtml.episodes.manifest import build_manifest

        if spec.role == "test" and exp.config.get("test_episodes"):
            from mtml.episodes.external import external_manifest

            return external_manifest(exp.config["test_episodes"], data, spec.split, exp.ways, exp.shots,
                                     exp.queries, f"experiments.{exp.name}.test_episodes")
        return build_manifest(data, spec.split, exp.ways, exp.shots, exp.queries, spec.episodes, spec.seed,
                              exp.name)

    def sources(self, exp) -> dict:
        out = super().sources(exp)
        if exp.config.get("test_episodes"):
            # the file's md5 joins the runs' input hashes: a changed file redoes them
            from mtml.episodes.external import file_fingerprint

            out["test_episodes"] = {"path": str(exp.config["test_episodes"]),
                                    "md5": file_fingerprint(exp.config["test_episodes"])}
        return out

    def context(self, exp, banks):
        from mtml.methods.base import LearnerContext

        return LearnerContext(banks[exp.dataset].image_shape, exp.ways)

    def stream(self, exp, banks, seed):
        from mtml.episodes.sampler import EpisodeStream

        # Training episodes use the train_* sizes (default: the test ones).
        return EpisodeStream(banks[exp.dataset], "train", exp.train_ways, exp.train_shots, exp.train_queries,
                             seed)

    def validate(self, exp, learner, banks, val):
        from mtml.training.trainer import episodes_accuracy

        ((spec, manifest),) = val
        return episodes_accuracy(learner, banks[spec.dataset], manifest)

    def score(self, exp, learner, bank, spec, manifest, label):
        from mtml.evaluation.evaluate import evaluate_manifest

        return evaluate_manifest(learner, bank, manifest, label, exp.evaluation.get("episode_batch", "auto"),
                                 exp.evaluation.get("nil", "means"))

    def summarise(self, run, learner, scored):
        from mtml.evaluation.evaluate import summary_row

        rows = [summary_row(run, spec.role, spec.dataset, frame) for spec, frame in scored]
        return rows, {"rows": []}
