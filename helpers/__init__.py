"""Thin helpers behind the notebooks: one idea per module, plain PyTorch. Imports flow one way: notebooks -> helpers.

Which notebook uses which module:

- `data` (01-05): bundled MNIST 5k, full MNIST on request, `select_classes`, `split_off_validation`, `make_moons`,
  TREC-6 (`load_trec6`), the stored sweeps behind 03, 04 and 05 (`load_sweep_results`).
- `models` (01-04): `mlp`, `body`, `with_new_head`, `n_params`, `count_parameters`, `print_trainable_parameters`.
- `training` (01-05): `train` (epochs or steps, per-parameter `lr_for`), `evaluate`, `predict`, `training_step`,
  `choose_lr` (learning rate chosen on a validation split), `TrainingDiverged`, `fit_linear_probe`, `set_seed`,
  `progress_bar`, `OPTIMIZERS`.
- `plotting` (01-05): the series' style, `stacked_bars`, `decision_boundary`, `show_interactive`.
- `memory` (01, 02): the memory formula, `finetune_memory`, `measure_training_memory`, `tensor_bytes`.
- `lora` (01, 02, 04, 05): `LoRALinear`, `add_lora`, merging, `save_adapter` / `load_adapter`, and the public
  surgery API `quant` builds on (`find_targets`, `replace_modules`, `freeze_all_but_lora`, ...).
- `quant` (02): NF4 and double quantisation, `LinearNF4`, `QLoRALinear`, `add_qlora`, `quantize_model`.
- `subspace` (03, 04, 05): dense / sparse / Fastfood projections, `fwht`, `SubspaceModel` (with `exclude`,
  `rescale` and SAID's per-block scales for large pre-trained models).
- `text` (05): all-MiniLM-L6-v2 offline (`load_minilm`), its tokenizer, `embed`, `SentenceClassifier`, SAID's
  blocks (`said_block`, `SAID_EXCLUDE`), `sort_by_length`.
- `text` (06): `lora_classifier` (the same LoRA four ways: ours, peft, QLoRA ours, QLoRA bitsandbytes), `step_times`.
- `intrinsic` (03, 04, 05): `sweep`, `baseline`, `dint90`, the toy problem.
- `idrank` (07): the MLP target tasks and their pre-trained start (`mlp_tasks`, `pretrain_body`, `mlp_model`), VeRA via
  `peft` (`with_vera`), trainable counts, the bundled SMS-spam and movie-snippet tasks (`load_text_task`), the gap
  rule's crossings for every method (`gap_estimates`), Spearman's ρ with a bootstrap over tasks and seeds.
- `analysis` (04): spectra, LoRA subspace similarity, training-step FLOPs (analytic, and as run: `measured_step_flops`).
- `checks` (every module): the shared argument checks (ValueError naming the value and the fix).
- `doctor` (no notebook): `make doctor`'s environment report (`python -m helpers.doctor`): versions against the pins,
  torch build, threads, JupyterLab settings, data and model checksums.

Contract: a refused call raises ValueError before touching the model, files or any random generator; a helper
never reseeds the global RNG (a `seed` seeds a local generator, or the work runs inside `torch.random.fork_rng`).
"""
