"""DTML (Zhang & Zhang, PRCV 2021): a segmentation and a signed-distance network that teach each other.

The trainer classes are imported on first use (see :mod:`nnunet_semisup.lazy_exports`)."""

from nnunet_semisup.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "trainer": (
            "DTMLTrainer",
            "DTMLTrainer_LabeledOnly",
            "DTMLTrainer_Ldis",
            "DTMLTrainer_LdisLmask",
        ),
    },
)
