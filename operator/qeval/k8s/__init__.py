"""The Kubernetes executor: the qeval operator.

``settings`` (environment), ``manifests`` (pure builders of Jobs and result objects),
``observe`` (child objects -> stage states), ``reconcile`` (pure: spec + observed ->
status and the Jobs to create), ``metrics``, ``publish`` (the stage side: a result
document -> a ConfigMap) and ``handlers`` (kopf, kept thin).
"""
