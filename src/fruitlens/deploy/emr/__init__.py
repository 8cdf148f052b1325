"""Deployment on AWS EMR on EKS: the profile (:mod:`.profile`), the StartJobRun request and the calls
(:mod:`.jobs`), IAM checks (:mod:`.access`), logs (:mod:`.cwlogs`, :mod:`.staging`), S3 staging of the
images (:mod:`.staging`) and the ``fruitlens emr`` / ``fruitlens data`` commands (:mod:`.cli`,
:mod:`.data_cli`). The pipeline's stage modules never import this package (tests/unit/test_layout.py).
"""
