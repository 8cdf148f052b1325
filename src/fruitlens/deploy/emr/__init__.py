"""Deployment on AWS EMR on EKS, one module per concern: the profile (:mod:`.profile`), errors and AWS'
errors translated (:mod:`.errors`), the StartJobRun request (:mod:`.request`) checked against botocore's
model of the API (:mod:`.validation`), IAM and trust policies (:mod:`.iam`), the boto3 calls and polling
(:mod:`.client`), IAM checks (:mod:`.access`), logs (:mod:`.cwlogs`) and ``fruitlens emr`` (:mod:`.cli`).
S3 staging and ``fruitlens data`` are fruitlens.deploy.s3data (which imports nothing of this package).
The pipeline's stage modules never import this package (tests/unit/test_architecture.py).
"""
