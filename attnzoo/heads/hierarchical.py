"""Two-level (hierarchical) document encoder with masked-sentence-block pre-training: SMITH
(Yang et al. 2020, "Beyond 512 Tokens: Siamese Multi-depth Transformer-based Hierarchical
Encoder for Long-Form Document Matching", arXiv:2004.12297).

    ids [B, N, L] long: N sentence blocks of L tokens;  mask [B, N, L] bool (True = real token)
    level 1: e_n = mean over real tokens of BlockEncoder(embed(ids_n))               [B, N, d]
    level 2: h = DocEncoder(e + pos_block);  doc = mean over real blocks of h         [B, d]

Masked sentence block prediction: replace a fraction of the block vectors fed to level 2 by a
learned [MASK] vector and predict each masked block's own e_n among all blocks of the batch
(softmax over dot products, cross-entropy to the true block), as SMITH does. Either level can be
any registered mixer (run non-causally, see attnzoo.models.encoder).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.models.encoder import Encoder


def masked_mean(h, mask):
    m = mask.to(h.dtype)[..., None]
    return (h * m).sum(-2) / m.sum(-2).clamp_min(1.0)


class HierarchicalEncoder(nn.Module):
    def __init__(self, vocab_size: int, d_model: int, *, block_mixer="softmax", doc_mixer="softmax",
                 block_layers: int = 2, doc_layers: int = 2, max_blocks: int = 64, mixer_kwargs: dict | None = None):
        super().__init__()
        self.d_model, self.max_blocks = d_model, max_blocks
        self.embed = nn.Embedding(vocab_size, d_model)
        self.block_pos = nn.Embedding(max_blocks, d_model)
        self.block_encoder = Encoder(d_model, block_layers, block_mixer, mixer_kwargs=mixer_kwargs)
        self.doc_encoder = Encoder(d_model, doc_layers, doc_mixer, mixer_kwargs=mixer_kwargs)
        self.mask_vector = nn.Parameter(torch.randn(d_model) * 0.02)

    def _check(self, ids, mask):
        if ids.dim() != 3 or ids.dtype != torch.long:
            raise ValueError(f"ids must be long [B, N_blocks, L], got {ids.dtype} {tuple(ids.shape)}")
        if ids.shape[1] > self.max_blocks:
            raise ValueError(f"at most max_blocks={self.max_blocks} blocks, got {ids.shape[1]}")
        if mask is None:
            return torch.ones_like(ids, dtype=torch.bool)
        if mask.dtype != torch.bool or mask.shape != ids.shape:
            raise ValueError(f"mask must be bool with the shape of ids {tuple(ids.shape)}")
        return mask

    def encode_blocks(self, ids, mask=None):
        """ids [B, N, L] -> block vectors [B, N, d] (zero for an all-padding block)."""
        mask = self._check(ids, mask)
        B, N, L = ids.shape
        flat_ids, flat_mask = ids.reshape(B * N, L), mask.reshape(B * N, L)
        keep = flat_mask.any(1)  # encode only blocks that hold a real token
        out = torch.zeros(B * N, self.d_model, dtype=self.embed.weight.dtype, device=ids.device)
        if keep.any():
            h = self.block_encoder(self.embed(flat_ids[keep]), mask=flat_mask[keep])
            out[keep] = masked_mean(h, flat_mask[keep])
        return out.view(B, N, self.d_model), mask.any(-1)

    def encode_document(self, blocks, block_mask):
        pos = self.block_pos(torch.arange(blocks.shape[1], device=blocks.device))
        h = self.doc_encoder(blocks + pos, mask=block_mask)
        return masked_mean(h, block_mask), h

    def forward(self, ids, mask=None):
        """Returns (doc [B, d], block states [B, N, d] after level 2)."""
        blocks, block_mask = self.encode_blocks(ids, mask)
        return self.encode_document(blocks, block_mask)

    def masked_block_loss(self, ids, mask=None, *, mask_prob: float = 0.25, generator=None):
        """SMITH's masked sentence block prediction loss (cross-entropy over the batch's blocks)."""
        blocks, block_mask = self.encode_blocks(ids, mask)
        B, N, d = blocks.shape
        pick = (torch.rand(B, N, generator=generator, device=ids.device) < mask_prob) & block_mask
        if not pick.any():  # always mask at least one real block
            b, n = torch.nonzero(block_mask)[0]
            pick[b, n] = True
        fed = torch.where(pick[..., None], self.mask_vector.to(blocks.dtype).expand(B, N, d), blocks)
        _, h = self.encode_document(fed, block_mask)
        cands = blocks[block_mask]  # [M, d] every real block of the batch
        logits = h[pick] @ cands.t()  # [n_masked, M]
        target = torch.cumsum(block_mask.flatten().long(), 0)[pick.flatten()] - 1
        return F.cross_entropy(logits, target)
