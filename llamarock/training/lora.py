"""The trainer: ``python -m llamarock.training.lora <job folder>`` trains a LoRA adapter (peft) on the weights that
serve the base model, as the folder's ``spec.json`` says, and leaves ``adapter/`` there (``job_files`` describes the
folder).

* Weights: a Hugging Face folder, or a GGUF file that transformers dequantizes (``gguf_file=``); the dequantized
  base is saved once as a Hugging Face folder (``base_cache``) so that later runs load it in seconds.
* Rows: each is one chat turn rendered with the weights' chat template; the loss is on the completion's tokens
  only (the prompt's labels are -100), the completion ending with the template's end-of-turn token.
* Precision: bf16 on a GPU that has it or a CPU with AVX512-BF16/AMX, else fp32; the LoRA weights stay fp32.
* Stop: the parent creates ``stop``; it is checked before every step. SIGTERM, or the parent going away (the
  server was killed), ends the run without a status (exit 4): the next server start resumes it from
  ``checkpoint.pt``, saved at the end of every epoch and every ``checkpoint_every`` steps.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from llamarock.training import job_files
from llamarock.training.job_files import TrainingSpec

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Interrupted(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Run:
    """One training run in its folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.spec = TrainingSpec.read(folder)
        self.parent = os.getppid()
        self.terminated = False
        self._progress = (folder / job_files.PROGRESS).open("a", encoding="utf-8")

    def emit(self, event: str, **values: Any) -> None:
        self._progress.write(json.dumps({"event": event, "time": time.time(), **values}) + "\n")
        self._progress.flush()

    def check(self) -> None:
        """Between steps: stop when asked, leave when the server is gone or sent SIGTERM."""
        if (self.folder / job_files.STOP).exists():
            raise Interrupted(job_files.EXIT_STOPPED)
        if self.terminated or os.getppid() != self.parent:
            raise Interrupted(job_files.EXIT_ORPHANED)

    # ----------------------------------------------------------------------------------------------- loading

    def load(self) -> tuple[Any, Any, str, Any]:
        """(model, tokenizer, the base's folder, dtype)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        spec = self.spec
        device = spec.device if spec.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if _bf16(torch, device) else torch.float32
        if spec.hf is not None:
            base = spec.hf
        else:
            assert spec.gguf is not None
            cache = Path(spec.base_cache) if spec.base_cache else None
            if cache is not None and (cache / "config.json").exists():
                base = str(cache)
            else:
                gguf = Path(spec.gguf)
                self.emit("loading", message=f"dequantizing {gguf.name}")
                tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                                  dtype=torch.float32)
                if cache is None:
                    return model.to(device=device, dtype=dtype), tokenizer, str(gguf), dtype
                staging = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
                # The weights are plain tensors once dequantized; transformers only refuses to save them because
                # the model remembers it came from a GGUF.
                model.hf_quantizer = None
                if hasattr(model.config, "quantization_config"):
                    del model.config.quantization_config
                model.save_pretrained(str(staging))
                tokenizer.save_pretrained(str(staging))
                try:
                    os.replace(staging, cache)
                except OSError:  # another run cached it meanwhile
                    pass
                base = str(cache)
        tokenizer = AutoTokenizer.from_pretrained(base)
        loaded: Any = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        return loaded.to(device), tokenizer, base, dtype

    # ----------------------------------------------------------------------------------------------- rows

    def rows(self, name: str, tokenizer: Any) -> list[tuple[list[int], list[int]]]:
        path = self.folder / name
        return [encode(tokenizer, json.loads(line), self.spec.max_length)
                for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    # ----------------------------------------------------------------------------------------------- training

    def train(self) -> None:
        import torch
        from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        spec = self.spec
        if spec.threads:
            torch.set_num_threads(spec.threads)
        torch.manual_seed(spec.seed)
        base_model, tokenizer, base_path, dtype = self.load()
        self.check()
        train_rows = self.rows(job_files.TRAIN, tokenizer)
        validation_rows = self.rows(job_files.VALIDATION, tokenizer) if spec.has_validation else []
        model = get_peft_model(base_model, LoraConfig(
            r=spec.lora_rank, lora_alpha=spec.lora_alpha, lora_dropout=0.0, target_modules=TARGET_MODULES,
            task_type="CAUSAL_LM",
        ))
        device = next(model.parameters()).device
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=spec.learning_rate, weight_decay=0.0)
        per_epoch = math.ceil(len(train_rows) / spec.batch_size)
        total = per_epoch * spec.epochs
        warmup = min(spec.warmup_steps, total)

        def rate(done: int) -> float:  # linear warm-up over `warmup` steps, then linear decay to 0 at the end
            if done < warmup:
                return (done + 1) / (warmup + 1)
            return max(0.0, 1.0 - done / total)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
        start = 0
        checkpoint = self.folder / job_files.CHECKPOINT
        if checkpoint.exists():
            state = torch.load(checkpoint, map_location=device, weights_only=False)
            set_peft_model_state_dict(model, state["adapter"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start = int(state["step"])
        self.emit("start", total_steps=total, steps_per_epoch=per_epoch, resumed_from=start, device=str(device),
                  dtype=str(dtype).removeprefix("torch."), rows=len(train_rows), validation_rows=len(validation_rows))

        def save(done: int) -> None:
            staging = checkpoint.with_suffix(".tmp")
            torch.save({"adapter": get_peft_model_state_dict(model), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "step": done}, staging)
            os.replace(staging, checkpoint)
            self.emit("checkpoint", step=done)

        model.train()
        for step in range(start, total):
            self.check()
            epoch, index = divmod(step, per_epoch)
            order = list(range(len(train_rows)))
            random.Random(spec.seed * 1000 + epoch).shuffle(order)
            batch = [train_rows[i] for i in order[index * spec.batch_size:(index + 1) * spec.batch_size]]
            loss = _loss(torch, model, batch, tokenizer, device)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            self.emit("step", step=step, epoch=epoch, loss=value, perplexity=_perplexity(value))
            if index == per_epoch - 1:
                if validation_rows:
                    model.eval()
                    with torch.no_grad():
                        losses = [float(_loss(torch, model, [row], tokenizer, device)) for row in validation_rows]
                    model.train()
                    mean = sum(losses) / len(losses)
                    self.emit("validation", step=step, epoch=epoch, loss=mean, perplexity=_perplexity(mean))
                save(step + 1)
            elif (step + 1) % spec.checkpoint_every == 0:
                save(step + 1)
        staging = self.folder / f"{job_files.ADAPTER}.tmp"
        model.save_pretrained(str(staging))
        config_path = staging / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base_path  # the weights it was trained on (a folder transformers loads)
        config_path.write_text(json.dumps(config, indent=2))
        final = self.folder / job_files.ADAPTER
        if final.exists():
            import shutil

            shutil.rmtree(final)
        os.replace(staging, final)
        self.emit("done", step=total)


def _bf16(torch: Any, device: str) -> bool:
    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and "bf16" in _cpu_flags()
    except (AttributeError, RuntimeError):
        return False


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


def _ids(value: Any) -> list[int]:
    """apply_chat_template's token ids, whether it answered a list or an encoding."""
    if hasattr(value, "keys"):
        value = value["input_ids"]
    return [int(token) for token in value]


def encode(tokenizer: Any, row: dict[str, Any], max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one row: the chat rendered with the template, labels only on the completion."""
    messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    prompt = _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    full = _ids(tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": row["completion"]}], tokenize=True))
    if full[: len(prompt)] != prompt:  # a template whose answer does not extend its prompt: append the text
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        full = prompt + list(tokenizer(row["completion"], add_special_tokens=False)["input_ids"]) + eos
    answer = full[len(prompt):]
    answer = answer[: max(1, max_length // 2)] if len(prompt) + len(answer) > max_length else answer
    prompt = prompt[-(max_length - len(answer)):] if len(prompt) + len(answer) > max_length else prompt
    return prompt + answer, [-100] * len(prompt) + answer


def _loss(torch: Any, model: Any, batch: list[tuple[list[int], list[int]]], tokenizer: Any, device: Any) -> Any:
    width = max(len(ids) for ids, _ in batch)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch], device=device)
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch], device=device)
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch], device=device)
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m llamarock.training.lora <job folder>", file=sys.stderr)
        return 2
    folder = Path(argv[1])
    (folder / job_files.PID).write_text(str(os.getpid()))
    run = Run(folder)

    def terminate(_signum: int, _frame: Any) -> None:
        run.terminated = True

    signal.signal(signal.SIGTERM, terminate)
    try:
        run.train()
    except Interrupted as interrupted:
        if interrupted.code == job_files.EXIT_STOPPED:
            run.emit("stopped")
        return interrupted.code
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        (folder / job_files.ERROR).write_text(message + "\n\n" + traceback.format_exc())
        run.emit("failed", message=message)
        return job_files.EXIT_FAILED
    return job_files.EXIT_DONE


if __name__ == "__main__":
    sys.exit(main(sys.argv))
