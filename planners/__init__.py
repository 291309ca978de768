"""Planner and preprocessor code (installed as ``nnunet_semisup.planners``).

nnU-Net only looks up planners and preprocessors inside its own package, so code here runs through the
``nnunet-semisup`` command line, and plans keep nnU-Net's ``DefaultPreprocessor`` so that
``nnUNetv2_predict`` keeps working. Unlabeled images are preprocessed with the dataset's own plans by
:mod:`nnunet_semisup.data.unlabeled`.
"""
