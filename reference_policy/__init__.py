"""The AR3D-R1-style reference policy and the adapters for the released checkpoints.

Here now: ``world`` (a procedural world of coloured voxel objects with known structure, 48 families in the five
MME-3DR categories, with a held-out split), ``verifiers`` (part counts, colours, relations, stability: the metric
of the procedural split and later the RL rewards), ``shapellm_vqvae`` (ShapeLLM-Omni's 3D VQ-VAE, loading the
released ``3DVQVAE.bin``), ``released`` (the ``ar3d-r1`` and ``shapellm-omni`` generators), and the core of the
small policy: ``tokenizer`` (word-level text + plan + mesh tokens), ``vqvae`` (a two-level colour VQ-VAE: 64 coarse
tokens for step 1, 512 fine tokens for step 2), ``policy`` (a Qwen2 decoder built from a config, two-step
constrained generation returning per-token log-probs) and ``pretrain`` (VQ-VAE then teacher forcing; ``--smoke``
for CPU tests). Still to come (tracked in its issue): the full pretraining run on a GPU, the bundled checkpoint,
its model card and the ``reference`` adapter.
"""
