"""Pre-flight model checks: something trains, adapters are not frozen, gradients reach the trainable weights."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model

from trl_masked_sft import MaskedSFTTrainer, MaskedSFTWarning, ModelSetupError, homework_lora_config
from trl_masked_sft.model_checks import adapter_parameters, check_gradients_reached, check_model_before_training
from trl_masked_sft.tiny import build_tiny_model


def qa_rows(n: int = 8) -> list[list]:
    return [[f"How many meters are there in {i} km?", f" <answer>{i * 1000}</answer>"] for i in range(1, n + 1)]


@pytest.fixture
def capture_log(capture_logs):
    """What the `trl_masked_sft.model_checks` logger says."""
    return capture_logs("trl_masked_sft.model_checks")


@pytest.fixture
def saved_adapter(tokenizer, tmp_path):
    """A LoRA adapter saved to disk, as a previous run leaves it."""
    path = tmp_path / "adapter"
    get_peft_model(build_tiny_model(tokenizer), homework_lora_config(r=4)).save_pretrained(path)
    return path


def test_lora_loaded_without_is_trainable_stops_before_step_one(tokenizer, make_config, saved_adapter):
    """`PeftModel.from_pretrained` defaults to inference mode: train() says so and names `is_trainable=True`."""
    model = PeftModel.from_pretrained(build_tiny_model(tokenizer), saved_adapter)
    trainer = MaskedSFTTrainer(model, args=make_config(), train_dataset=qa_rows(), processing_class=tokenizer)
    with pytest.raises(ModelSetupError, match=r"(?s)no trainable parameter.*inference mode.*is_trainable=True"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_lora_loaded_with_is_trainable_passes_the_checks(tokenizer, saved_adapter):
    """The same adapter loaded with `is_trainable=True` passes."""
    model = PeftModel.from_pretrained(build_tiny_model(tokenizer), saved_adapter, is_trainable=True)
    check_model_before_training(model)


def test_fully_frozen_plain_model_raises_naming_the_fix(model):
    """A plain model with every weight frozen is refused, suggesting unfreezing or a peft_config."""
    model.requires_grad_(False)
    with pytest.raises(ModelSetupError, match=r"0 of [\d,]+ require grad.*peft_config="):
        check_model_before_training(model)


def test_frozen_adapter_next_to_trainable_weights_raises(model):
    """A PeftModel whose adapter is frozen while other weights train would leave the adapter unchanged."""
    peft_model = get_peft_model(model, homework_lora_config(r=4))
    for name, param in peft_model.named_parameters():
        param.requires_grad_("lm_head" in name)
    with pytest.raises(ModelSetupError, match=r"(?s)active adapter .*'default'.* is frozen: 0 of its 28 .*lm_head"):
        check_model_before_training(peft_model)


def test_partly_frozen_adapter_warns_naming_the_tensors(model):
    """Some frozen adapter tensors are a warning that names them."""
    peft_model = get_peft_model(model, homework_lora_config(r=4))
    for _, param in list(adapter_parameters(peft_model))[:2]:
        param.requires_grad_(False)
    with pytest.warns(MaskedSFTWarning, match=r"2 of the 28 adapter weight tensors are frozen"):
        check_model_before_training(peft_model)


def test_reentrant_checkpointing_with_frozen_embeddings_gets_input_grads_and_says_so(
    tokenizer, model, make_config, capture_log
):
    """User-enabled reentrant checkpointing + frozen embeddings: fixed at train() and logged, and the layers train."""
    model.get_input_embeddings().requires_grad_(False)
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    else:  # transformers 4.x's name
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    if hasattr(model, "_require_grads_hook"):  # 5.x's enable adds it; 4.x's does so only for a PEFT model
        model.disable_input_require_grads()  # as a model prepared by hand might be
    config = make_config(activation_checkpointing=False, max_steps=1, optim="sgd", learning_rate=0.1)
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=qa_rows(), processing_class=tokenizer)
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    trainer.train()
    assert any("enable_input_require_grads()" in r for r in capture_log), capture_log
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, before)


def test_no_gradient_reaching_any_trainable_weight_raises():
    """After a backward pass that reaches no trainable tensor, the check raises naming the likely causes."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    net[0].requires_grad_(False)
    with torch.no_grad():
        hidden = net[0](torch.ones(1, 3))
    (net[1](hidden.detach()).sum() * 0).backward()
    net[1].weight.grad = None
    net[1].bias.grad = None
    with pytest.raises(
        ModelSetupError, match=r"(?s)No trainable parameter received a gradient.*enable_input_require_grads"
    ):
        check_gradients_reached(net)


def test_adapter_on_an_unused_module_warns_after_the_first_step(tokenizer, model, make_config):
    """LoRA on a module the forward pass never uses: the first step warns that those tensors never train."""
    model.unused = torch.nn.Linear(64, 64)
    config = homework_lora_config(r=4, target_modules=["q_proj", "unused"])
    trainer = MaskedSFTTrainer(
        model, args=make_config(max_steps=1), train_dataset=qa_rows(), processing_class=tokenizer, peft_config=config
    )
    with pytest.warns(MaskedSFTWarning, match=r"2 of \d+ trainable tensors received no gradient.*unused"):
        trainer.train()


def test_zero_gradient_counts_as_received():
    """LoRA's A matrix gets an exactly-zero gradient at step 1 (B starts at 0): that is not a missing gradient."""
    layer = torch.nn.Linear(2, 1)
    (layer(torch.zeros(1, 2)).sum() * 0).backward()
    check_gradients_reached(layer)
