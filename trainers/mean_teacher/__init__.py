"""Mean teacher (Tarvainen & Valpola, NeurIPS 2017): an EMA teacher's predictions as consistency targets.

The trainer classes are imported on first use (see :mod:`nnunet_semisup.lazy_exports`)."""

from nnunet_semisup.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "trainer": (
            "MeanTeacherTrainer",
            "MeanTeacherTrainer_PredictTeacher",
        ),
    },
)
