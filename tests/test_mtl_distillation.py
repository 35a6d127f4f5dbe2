"""Knowledge distillation into the multi-task student (issue 16): the loss against plain
references, zero when the student reproduces its teacher, one-line errors, and teacher runs
scheduled before the student by Snakemake and by the generated dvc.yaml."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch.nn import functional as F

from mtml.errors import UserError
from mtml.multitask.data import Subtask
from mtml.multitask.distillation import kd_loss, mix, prediction_loss
from mtml.multitask.tasks import TASKS

pytestmark = pytest.mark.usefixtures("small_ops")  # tests/conftest.py

SHAPE = (3, 16, 16)
TASK_NAMES = ["classification", "depth", "vanishing_point"]


def test_kd_loss_is_zero_for_equal_predictions_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, generator=g)
    for t in (1.0, 2.0, 4.0):
        assert float(kd_loss(z, z.clone(), t)) == pytest.approx(0.0, abs=1e-6)
        assert float(kd_loss(z, z + torch.randn(6, 5, generator=g), t)) > 1e-3
    maps = torch.randn(4, 1, 8, 8, generator=g)
    assert float(prediction_loss("dense", maps, maps.clone(), 2.0)) == 0.0
    assert float(prediction_loss("dense", maps, maps + 0.5, 2.0)) == pytest.approx(0.25)


def test_distillation_loss_and_gradient_match_a_plain_reference():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (7,), generator=g)
    temp, alpha = 3.0, 0.3

    ours = mix(F.cross_entropy(s, y), kd_loss(s, t, temp), alpha)
    # written out: (1 - a) mean_n -log p_s[y] + a T^2 mean_n sum_c p_t (log p_t - log p_s^T)
    log_p = s - s.exp().sum(1, keepdim=True).log()
    log_ps_t = s / temp - (s / temp).exp().sum(1, keepdim=True).log()
    pt = (t / temp).exp() / (t / temp).exp().sum(1, keepdim=True)
    ref = (1 - alpha) * -log_p[torch.arange(7), y].mean() + alpha * temp ** 2 * (pt * (pt.log() - log_ps_t)).sum(1).mean()
    assert torch.allclose(ours, ref)
    g_ours, = torch.autograd.grad(ours, s)
    g_ref, = torch.autograd.grad(ref, s)
    assert torch.allclose(g_ours, g_ref)
    # the distillation term's gradient in closed form (Hinton et al. eq. 2, times T^2, mean over rows):
    # d/dz T^2 KL = T (softmax(z / T) - softmax(t / T)) / N
    g_kd, = torch.autograd.grad(kd_loss(s, t, temp), s)
    assert torch.allclose(g_kd, temp * (F.softmax(s / temp, 1) - F.softmax(t / temp, 1)) / 7)
    assert torch.autograd.gradcheck(lambda z: kd_loss(z, t, temp), (s,))


def _subtasks(seed: int = 0) -> dict[str, list[Subtask]]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in TASK_NAMES:
        spec = TASKS[name]
        if spec.kind == "classification":
            ys, yq = torch.arange(3).repeat(2), torch.arange(3).repeat(3)
        elif spec.kind == "dense":
            ys, yq = torch.rand(4, spec.channels, *SHAPE[1:], generator=g), torch.rand(5, spec.channels, *SHAPE[1:], generator=g)
        else:
            ys, yq = torch.randn(4, spec.channels, generator=g), torch.randn(5, spec.channels, generator=g)
        out[name] = [Subtask(name, torch.rand(len(ys), *SHAPE, generator=g), ys,
                             torch.rand(len(yq), *SHAPE, generator=g), yq, "e0", 3)]
    return out


def _learner(algorithm="mt-anil", **hp):
    from mtml.methods import resolve_hparams

    cls, hp = resolve_hparams("m", {"algorithm": algorithm, "filters": 4, "inner_steps": 2, **hp})
    return cls(hp, SHAPE, 3, [TASKS[n] for n in TASK_NAMES])


@pytest.mark.parametrize("target", ["predictions", "features"])
@pytest.mark.parametrize("algorithm", ["mt-anil", "mt-am"])
def test_distillation_loss_is_zero_when_the_student_reproduces_its_teacher(algorithm, target):
    torch.manual_seed(0)
    student = _learner(algorithm, distill="teacher", distill_target=target)
    teacher = _learner(algorithm)
    teacher.load_state_dict(student.state_dict())
    student.attach_dependencies({"teacher": teacher.eval()})
    _, stats, _ = student.meta_loss_terms(_subtasks())
    assert set(stats["trace"]["distill_loss"]) == set(TASK_NAMES)
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in stats["trace"]["distill_loss"].values())
    # another teacher: every task's term is positive and the student's loss changes with it
    torch.manual_seed(1)
    other = _learner(algorithm)
    student.attach_dependencies({"teacher": other.eval()})
    _, stats, _ = student.meta_loss_terms(_subtasks())
    assert all(v > 1e-6 for v in stats["trace"]["distill_loss"].values())
    assert "teacher" not in "".join(student.state_dict())  # not saved with the student


def test_distillation_weight_mixes_task_and_teacher_losses():
    torch.manual_seed(0)
    subs = _subtasks()
    plain = _learner()
    student = _learner(distill="teacher", distill_weight=0.25)
    student.load_state_dict(plain.state_dict())
    torch.manual_seed(1)
    student.attach_dependencies({"teacher": _learner().eval()})
    _, _, p = plain.meta_loss_terms(subs)
    _, stats, s = student.meta_loss_terms(subs)
    for task in TASK_NAMES:  # one subtask per task: the loss is the mix of the two
        expected = 0.75 * float(p["task_losses"][task].detach()) + 0.25 * stats["trace"]["distill_loss"][task]
        assert float(s["task_losses"][task].detach()) == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- the two front doors

SCENES = {"image_size": 16, "room_types": [8, 3, 3], "images_per_class": 8}
PARAMS = {
    "seed": 0, "device": "cpu", "threads": 1,
    "datasets": {"scenes": {"source": "scenes", "options": {**SCENES, "environments": [4, 1, 2]}}},
    "experiments": {"mt": {"kind": "multitask", "dataset": "scenes", "ways": 3, "shots": 2, "queries": 3,
                           "options": {"tasks": TASK_NAMES, "dense_shots": 3, "dense_queries": 3}}},
    "methods": {
        "teacher": {"algorithm": "mt-anil", "tasks": "single", "filters": 8, "inner_steps": 2,
                    "inner_lr": {"classification": 0.4}},
        "student": {"algorithm": "mt-anil", "filters": 8, "inner_steps": 2, "inner_lr": {"classification": 0.4},
                    "distill": "teacher"},
    },
    "training": {"iterations": 20, "meta_batch": 2, "meta_lr": 0.005, "val_interval": 20, "val_episodes": 2},
    "evaluation": {"episodes": 6},
}


def _study(**methods):
    from mtml.params import study

    p = copy.deepcopy(PARAMS)
    p["methods"].update(copy.deepcopy(methods))
    return study(p)


@pytest.mark.parametrize("student, message", [
    ({"distill": "nobody"}, "'methods.student.distill' names method 'nobody', which is not in params"),
    ({"distill": "student"}, "'methods.student.distill' names the method itself"),
    ({"distill": "teacher", "distill_target": "features", "filters": 4},
     "'methods.student.distill_target' is features, but teacher 'teacher' has 8 filters"),
])
def test_bad_teachers_are_one_line_errors(student, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        _study(student={**PARAMS["methods"]["student"], **student})


def test_a_teacher_must_not_distill_itself():
    with pytest.raises(UserError, match="teacher 'student' distills from 'teacher' itself"):
        _study(third={"algorithm": "mt-anil", "filters": 8, "distill": "student"})


def test_dvc_train_stage_of_the_student_depends_on_the_teacher_model():
    from mtml.layout import Layout
    from mtml.workflow_dvc import dvc_stages

    study = _study()
    layout = Layout(Path("."), study)
    stages = dvc_stages(layout)
    teacher_model = str(layout.model("mt", "teacher", 0))
    assert teacher_model in stages["train.mt.teacher.0"]["outs"]
    assert teacher_model in stages["train.mt.student.0"]["deps"]
    assert str(layout.model("mt", "student", 0)) not in stages["train.mt.teacher.0"]["deps"]
    # evaluation reads the student alone
    assert teacher_model not in stages["evaluate.mt.student.0"]["deps"]


@pytest.mark.slow
def test_both_front_doors_schedule_the_teacher_before_the_student(tmp_path):
    from pipeline_helpers import project_dir, run_command

    root = project_dir(tmp_path / "p", copy.deepcopy(PARAMS))
    teacher, student = (f"models/default/mt/{m}/seed-0/model.pt" for m in ("teacher", "student"))
    # Snakemake: asking for the student's model alone schedules the teacher's training first
    dry = run_command(["snakemake", "-n", "--cores", "1", "--printshellcmds", student], root).stdout
    trains = [line for line in dry.splitlines() if "python -m mtml train" in line]
    assert len(trains) == 2, dry
    assert "--method teacher" in trains[0] and "--method student" in trains[1], trains
    # DVC (the generated dvc.yaml): the student's stage depends on the teacher stage's output
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert teacher in stages["train.mt.student.0"]["deps"] and teacher in stages["train.mt.teacher.0"]["outs"]
    run_command(["dvc", "init", "--no-scm", "-q"], root)
    dag = run_command(["dvc", "dag", "--md", "train.mt.student.0"], root).stdout
    assert "train.mt.teacher.0" in dag and "episodes.mt" in dag, dag


@pytest.mark.slow
def test_the_train_stage_distills_from_the_trained_teacher(tmp_path):
    import json

    from mtml import stages
    from mtml.layout import Layout

    study = _study()
    layout = Layout(tmp_path, study)
    stages.prepare(study, layout, "scenes")
    stages.build_episodes(study, layout, "mt")
    student = study.run("mt", "student")
    with pytest.raises(UserError, match="models/default/mt/teacher/seed-0/model.pt is missing"):
        stages.train(student, layout, torch.device("cpu"))
    stages.train(study.run("mt", "teacher"), layout, torch.device("cpu"))
    stages.train(student, layout, torch.device("cpu"))
    traces = [json.loads(line) for line in (layout.run_dir("mt", "student") / "trace.jsonl").read_text().splitlines()]
    assert len(traces) == 20 and all(set(t["distill_loss"]) == set(TASK_NAMES) for t in traces)
    assert all(v > 0 for t in traces for v in t["distill_loss"].values())
    # the student's model holds the student alone, and evaluates without its teacher
    rows = stages.evaluate(student, layout, torch.device("cpu"))
    assert rows and all(0 <= r["accuracy"] <= 100 for r in rows)


@pytest.mark.slow
def test_the_train_stage_distills_features_from_the_trained_teacher(tmp_path):
    """distill_target: features end to end: a tiny teacher and student trained by the stages;
    on one batch the trained student's loss is (1 - alpha) x its loss at distill_weight 0 plus
    alpha x the mean squared difference of the two models' query embeddings, written out."""
    import json

    from mtml import stages
    from mtml.layout import EVAL_FILES, TRAIN_FILES, Layout

    p = copy.deepcopy(PARAMS)
    p["training"].update(iterations=4, val_interval=4)
    p["evaluation"]["episodes"] = 2
    p["methods"]["student"]["distill_target"] = "features"
    from mtml.params import study as make_study

    study = make_study(p)
    layout = Layout(tmp_path, study)
    stages.prepare(study, layout, "scenes")
    stages.build_episodes(study, layout, "mt")
    teacher_run, student_run = study.run("mt", "teacher"), study.run("mt", "student")
    stages.train(teacher_run, layout, torch.device("cpu"))
    stages.train(student_run, layout, torch.device("cpu"))
    stages.evaluate(student_run, layout, torch.device("cpu"))
    run_dir = layout.run_dir("mt", "student")
    assert all((run_dir / f).stat().st_size > 0 for f in TRAIN_FILES + EVAL_FILES)
    assert layout.model("mt", "student").exists()
    traces = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    assert len(traces) == 4 and all(v > 0 for t in traces for v in t["distill_loss"].values())
    assert all(set(t["distill_loss"]) == set(TASK_NAMES) for t in traces)

    student = stages.load_learner(student_run, layout, torch.device("cpu")).train()
    teacher = stages.load_learner(teacher_run, layout, torch.device("cpu"))
    student.attach_dependencies({"teacher": teacher})
    alpha = student.hp["distill_weight"]
    assert student.hp["distill_target"] == "features" and 0 < alpha < 1
    subs = _subtasks(3)  # one subtask per task
    with torch.no_grad():
        _, stats, mixed = student.meta_loss_terms(subs)
        feature_term = {t: float(((student.subtask_embeddings(s[0])[1] - teacher.subtask_embeddings(s[0])[1]) ** 2)
                                 .mean()) for t, s in subs.items()}
        student.hp["distill_weight"] = 0.0
        _, _, plain = student.meta_loss_terms(subs)
    for t in TASK_NAMES:
        assert feature_term[t] > 1e-6 and stats["trace"]["distill_loss"][t] == pytest.approx(feature_term[t], rel=1e-4)
        m, q = float(mixed["task_losses"][t]), float(plain["task_losses"][t])
        assert m != pytest.approx(q, rel=1e-3)
        assert m == pytest.approx((1 - alpha) * q + alpha * feature_term[t], rel=1e-5)
