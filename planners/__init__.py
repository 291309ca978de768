"""Planning that sees the unlabeled images (installed as ``nnunet_semisup.planners``).

nnU-Net only looks up planners and preprocessors inside its own package, so these planners
(:mod:`.experiment_planners`, with the fingerprint of :mod:`.fingerprint`) run through
``nnunet-semisup plan-and-preprocess`` (:mod:`.cli`), and the plans they write name only nnU-Net's classes
(``DefaultPreprocessor``, its network classes), so ``nnUNetv2_train -p`` and ``nnUNetv2_predict -p`` use them
unchanged. See docs/planners.md. Nothing is imported here, so that the command line starts fast.
"""
