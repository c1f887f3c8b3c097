"""Vision mixers over [B, H, W, C] feature maps (plain nn.Modules, not registered token mixers)."""
