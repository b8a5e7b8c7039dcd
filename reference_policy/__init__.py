"""The AR3D-R1-style reference policy and the adapters for the released checkpoints.

- ``world``: a procedural world of coloured voxel objects with known structure (48 families in the five MME-3DR
  categories, with a held-out split); ``verifiers``: part counts, colours, relations and stability, the metric of
  the procedural split and the RL rewards;
- the small policy: ``tokenizer`` (word-level text + plan + mesh tokens), ``vqvae`` (a two-level colour VQ-VAE:
  64 coarse tokens for step 1, 512 fine tokens for step 2), ``policy`` (a Qwen2 decoder built from a config,
  batched two-step constrained generation returning per-token log-probs), ``pretrain`` (VQ-VAE then teacher
  forcing; ``--smoke`` for CPU tests), ``evaluate`` (verifier accuracy and speed per split) and ``generator``
  (the ``reference`` adapter over the bundled ``checkpoint/``; model card in ``data_cards/reference_policy.md``);
- the released checkpoints: ``shapellm_vqvae`` (ShapeLLM-Omni's 3D VQ-VAE, loading the released ``3DVQVAE.bin``)
  and ``released`` (the ``ar3d-r1`` and ``shapellm-omni`` generators).
"""
