"""PTM-Mamba's two ESM paths. Embeddings precomputed from the unmasked sequence (the seed's HDF5 stage)
leak every masked residue into the masked-LM objective; the default computes ESM on the masked input.
These tests show the leak on tiny data, and check the HDF5 stage itself (resumable, skipped when complete)."""

from __future__ import annotations

import torch

from helixrun_trainer.recipes.ptm_mamba import Collate, embeddings, tiny_ptm_sequences, vocab
from helixrun_trainer.recipes.ptm_mamba.model import PTMMamba, tiny_esm


def tiny_model(seed: int = 0, layers: int = 2) -> PTMMamba:
    torch.manual_seed(seed)
    return PTMMamba(d_model=32, layers=layers, esm=tiny_esm(), esm_dim=32, esm_layer=2, state_size=8)


def records(n: int, seed: int, longest: int = 40):
    return [(uid, seq, vocab.encode(seq)) for uid, seq in tiny_ptm_sequences(seed, n, longest)]


def test_esm_state_at_a_masked_position_differs_between_paths_and_reveals_the_residue():
    model = tiny_model().eval()
    recs = records(24, 1)
    batch = Collate()(recs, torch.Generator().manual_seed(0))
    masked = batch["labels"] != -100
    truth = torch.where(masked, batch["labels"], batch["input_ids"])  # the unmasked sequence
    on_the_fly = model.esm_states(batch["input_ids"], batch["attention_mask"])
    precomputed = model.esm_states(truth, batch["attention_mask"])
    assert not torch.allclose(on_the_fly[masked], precomputed[masked]), "the two paths agree at masked positions"
    # Nearest neighbour over ESM states of visible residues: which residue sits at each masked position?
    visible = (batch["attention_mask"] == 1) & ~masked & ~torch.isin(truth, torch.tensor([vocab.CLS, vocab.EOS]))
    bank, bank_labels = precomputed[visible], truth[visible]

    plain = masked & ~torch.isin(truth, torch.tensor(sorted(vocab.PTM_IDS)))  # PTM tokens have no ESM letter

    def recovered(states):
        nearest = torch.cdist(states[plain], bank).argmin(1)
        return (bank_labels[nearest] == truth[plain]).float().mean().item()

    leak, honest = recovered(precomputed), recovered(on_the_fly)
    assert leak > 0.9, f"precomputed states should identify masked residues (recovered {leak:.2f})"
    assert honest < 0.5, f"masked-input states should not (recovered {honest:.2f})"


def train(model, train_recs, store, steps: int, seed: int):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    collate = Collate(store)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        idx = torch.randint(len(train_recs), (8,), generator=gen).tolist()
        batch = collate([train_recs[i] for i in idx], gen)
        logits = model(batch["input_ids"], batch["attention_mask"], batch.get("esm_embeddings"))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def masked_loss(model, recs, store) -> float:
    model.eval()
    batch = Collate(store)(recs, torch.Generator().manual_seed(123))
    logits = model(batch["input_ids"], batch["attention_mask"], batch.get("esm_embeddings"))
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100).item()


def test_training_on_precomputed_embeddings_reaches_an_impossible_masked_lm_loss(tmp_path):
    """Same data, seed and steps: the model fed unmasked (precomputed, via the real HDF5 stage) embeddings
    reaches a far lower masked-token loss than the one fed masked-input embeddings: it reads the answers."""
    recs = records(96, 2, longest=20)
    train_recs, val_recs = recs[:64], recs[64:]
    leaky, honest = tiny_model(0, layers=1), tiny_model(0, layers=1)
    embeddings.precompute_all(leaky, {"train": [(u, s) for u, s, _ in train_recs], "val": [(u, s) for u, s, _ in val_recs]},
                              tmp_path, rank=0, world=1, batch_size=32, device="cpu")
    store = embeddings.EmbeddingStore(tmp_path)
    train(leaky, train_recs, store, steps=30, seed=0)
    train(honest, train_recs, None, steps=30, seed=0)
    leak_loss, honest_loss = masked_loss(leaky, val_recs, store), masked_loss(honest, val_recs, None)
    assert leak_loss < 0.6 * honest_loss, (
        f"precomputed (leaky) masked-token loss {leak_loss:.3f} should be far below on-the-fly {honest_loss:.3f}")


def test_precompute_is_per_rank_resumable_and_skipped_when_complete(tmp_path):
    model = tiny_model().eval()
    split = [(u, s) for u, s, _ in records(10, 3)]
    written = [embeddings.precompute_split(model, split, tmp_path, "train", rank=r, world=2, batch_size=4) for r in (0, 1)]
    assert written == [5, 5] and embeddings.split_complete(tmp_path, "train")
    assert embeddings.precompute_all(model, {"train": split}, tmp_path, rank=0, world=2, batch_size=4, device="cpu") \
        == {"train": 0}, "a complete split must be skipped"
    # A rank killed mid-way: its marker absent, part of its share written -> only the rest is embedded.
    import h5py

    marker = embeddings.done_path(tmp_path, "train", 1, 2)
    marker.unlink()
    shard = embeddings.shard_path(tmp_path, "train", 1, 2)
    with h5py.File(shard, "a") as h5:
        del h5[split[1][0]]
        del h5[split[3][0]]
    assert embeddings.precompute_split(model, split, tmp_path, "train", rank=1, world=2, batch_size=4) == 2
    store = embeddings.EmbeddingStore(tmp_path)
    uid, seq = split[3]
    expected = model.esm_states(torch.tensor([vocab.encode(seq)]), torch.ones(1, len(vocab.encode(seq)), dtype=torch.long))
    assert torch.allclose(store.get(uid, seq), expected[0].half().float())
    try:
        store.get(uid, seq + "K")
    except ValueError as exc:
        assert "computed from another sequence" in str(exc)
    else:
        raise AssertionError("a changed sequence must not reuse a stale embedding")
