"""Run by tests/test_trainers.py under torchrun: a Sparse-GIN model sharded with FSDP2 (fully_shard, as accelerate's
FSDP plugin does on GPUs) on CPU processes (gloo); prints its gradients' agreement with the unsharded model and what
its full state dict holds. Not collected by pytest (no test_ prefix)."""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from transformers import LlamaForCausalLM

from ginformer.adapter import SparseGINConfig, get_sparse_gin_model


def build(base_dir):
    torch.manual_seed(0)  # the same adapter on every process
    model = get_sparse_gin_model(LlamaForCausalLM.from_pretrained(base_dir), SparseGINConfig(d_gnn=8, dropout=0.0))
    with torch.no_grad():
        for adapter in model.adapters:
            adapter.scale.fill_(0.3)
    return model


def main(base_dir):
    dist.init_process_group("gloo")
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    reference = build(base_dir)
    reference(input_ids=ids, labels=ids).loss.backward()
    model = build(base_dir)
    for layer in model.get_base_model().model.layers:  # one unit per decoder layer, then the rest
        fully_shard(layer)
    fully_shard(model)
    model(input_ids=ids, labels=ids).loss.backward()
    expected = dict(reference.named_parameters())
    worst = max((p.grad.full_tensor() - expected[name].grad).abs().max().item()
                for name, p in model.named_parameters() if p.grad is not None)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        print(json.dumps({"world_size": dist.get_world_size(), "max_grad_difference": worst,
                          "state_dict_keys": sorted(full), "adapter_keys": sorted(reference.adapter_state_dict())}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
