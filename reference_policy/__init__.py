"""The bundled AR3D-R1-style reference policy (text -> plan -> 3D tokens -> VQ-VAE -> mesh).

This package is empty for now: the model, its procedural training world and the released-checkpoint
adapters are tracked as their own issue. It ships as a top-level package so that its import path is stable.
"""
