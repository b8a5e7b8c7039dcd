"""The AR3D-R1-style reference policy and the adapters for the released checkpoints.

Here now: ``world`` (a procedural world of coloured voxel objects with known structure, 48 families in the five
MME-3DR categories, with a held-out split), ``verifiers`` (part counts, colours, relations, stability: the metric
of the procedural split and later the RL rewards), ``shapellm_vqvae`` (ShapeLLM-Omni's 3D VQ-VAE, loading the
released ``3DVQVAE.bin``) and ``released`` (the ``ar3d-r1`` and ``shapellm-omni`` generators). Still to come
(tracked in its issue): the small text -> plan -> 3D-token policy, its VQ-VAE, pretraining and the bundled
checkpoint.
"""
