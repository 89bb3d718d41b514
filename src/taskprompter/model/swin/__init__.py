"""The Swin-B TaskPrompter of Cityscapes-3D (swin-cityscapes3d.md section 1), one file per component:
windows, block, merging, encoder, decoder, heads, fidelity, taskprompter_swin, weights (ImageNet Swin), released
(released checkpoints) and profile."""
