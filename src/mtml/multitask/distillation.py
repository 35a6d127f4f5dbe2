"""Knowledge distillation into a multi-task student (the `distill` options of the multi-task
learners): teachers are other runs of the same study, trained first by both front doors.

`distill: <method>` names the teacher: that method's trained model (model.pt) on the same
experiment with the same training seed. The paper-style setup (Hinton et al. 2015, distilling
single-task specialists into one model) is a teacher with `tasks: single` (one backbone per
task, each trained only on its task's loss) and a student with `tasks: multi`; any other
multi-task method that does not distill itself can be a teacher.

Per subtask the student's query loss of task t becomes Hinton et al.'s weighted average

    L_t = (1 - alpha) L_task(student) + alpha D_t          (alpha = `distill_weight`)

where D_t compares the student with the frozen teacher on the same query set:

- `distill_target: predictions` (default): the teacher adapts its own head on the support
  set (its `inner_steps`) and predicts the query set. Classification:
  D = T^2 KL(softmax(z_teacher / T) || softmax(z_student / T)) (Hinton et al.'s softened
  logits, T = `distill_temperature`; T^2 keeps the gradient's scale as T changes); the other
  tasks: D = mean squared difference of the predictions (the L2 prediction term for dense
  and vector outputs).
- `distill_target: features`: D = mean squared difference of the query embeddings (the
  student's trunk features for t against the teacher's, AM/P-AM channel weights applied);
  both must have the same width (`filters`).

D is zero when the student reproduces the teacher. The teacher is not a submodule of the
student: it is neither trained nor saved in the student's model.pt, and evaluation uses the
student alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from mtml.errors import UserError
from mtml.options import Option

TARGETS = ("predictions", "features")
OPTIONS = {
    "distill": Option(str, None, "teacher: a method of this study whose model (same experiment and seed) "
                      "the student is distilled from; null: no distillation"),
    "distill_weight": Option(float, 0.5, "alpha: each task's loss is (1 - alpha) task loss + alpha "
                             "distillation loss (Hinton et al.'s weighted average)", min=0, max=1),
    "distill_temperature": Option(float, 2.0, "T of the softened classification logits (the term is "
                                  "scaled by T^2)", min=0, above=True),
    "distill_target": Option(str, "predictions", "predictions: the teacher's adapted query predictions | "
                             "features: its query embeddings", choices=TARGETS),
}


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al.: T^2 KL(p_teacher || p_student), p = softmax(logits / T), mean over rows."""
    t = float(temperature)
    return t * t * F.kl_div(F.log_softmax(student_logits / t, -1), F.softmax(teacher_logits / t, -1),
                            reduction="batchmean")


def prediction_loss(kind: str, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """D of one task's predictions: softened-logit KL for classification, else L2."""
    if kind == "classification":
        return kd_loss(student, teacher, temperature)
    return F.mse_loss(student, teacher)


def mix(task_loss: Tensor, distill_loss: Tensor, weight: float) -> Tensor:
    return (1 - weight) * task_loss + weight * distill_loss


def teacher_outputs(teacher, sub) -> Tensor:
    """The frozen teacher's query predictions: its head adapted on the support set with its own
    training inner steps (first order: only the values are used)."""
    with torch.enable_grad():  # the inner loop differentiates the head even when the caller does not
        w, _ = teacher.channel_weights(sub, sample=False)
        return teacher.query_output(sub, w, teacher.hp["inner_steps"], first_order=True).detach()


def distill_loss(student, sub, out: Tensor, w: Tensor | None) -> Tensor:
    """D for one subtask: `out` is the student's query output under its channel weights `w`."""
    hp, teacher = student.hp, student.teacher
    if hp["distill_target"] == "features":
        with torch.no_grad():
            target = teacher.subtask_embeddings(sub)[1]
        return F.mse_loss(student.embed(sub.query_x, sub.task, w), target)
    return prediction_loss(student.task_specs[sub.task].kind, out, teacher_outputs(teacher, sub),
                           hp["distill_temperature"])


def check(run, key: Callable[[str], str]) -> None:
    """UserError naming `methods.<m>.distill` when the teacher cannot teach this run."""
    teacher = run.hparams["distill"]
    if teacher is None:
        return
    study, exp = run.study, run.experiment.name
    if teacher not in study.methods:
        raise UserError(f"{key('distill')} names method {teacher!r}, which is not in params 'methods' "
                        f"(defined: {', '.join(study.methods)})")
    if teacher == run.method:
        raise UserError(f"{key('distill')} names the method itself; name a teacher method, e.g. one with "
                        f"'tasks: single'")
    trun = study.run(exp, teacher, run.seed)
    from mtml.methods.multitask import MultiTaskLearner

    if not issubclass(trun.cls, MultiTaskLearner):
        raise UserError(f"{key('distill')}: teacher {teacher!r} is a {trun.cls.algorithm} method; it must be "
                        f"a multi-task one (mt-anil, mt-am, mt-pam, mt-maml)")
    if trun.hparams.get("distill") is not None:
        raise UserError(f"{key('distill')}: teacher {teacher!r} distills from {trun.hparams['distill']!r} "
                        f"itself; a teacher must be trained without distill (set it to null there)")
    if run.hparams["distill_target"] == "features" and trun.hparams["filters"] != run.hparams["filters"]:
        raise UserError(f"{key('distill_target')} is features, but teacher {teacher!r} has "
                        f"{trun.hparams['filters']} filters and the student {run.hparams['filters']}; "
                        f"give them the same filters or use distill_target: predictions")
