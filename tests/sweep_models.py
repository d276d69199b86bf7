"""Architectures nobody tuned torchslim for (issue 16, item 6): tiny transformers configs with random
weights and custom modules with awkward forwards. Each factory returns (model, example inputs).
Shared by tests/test_sweep.py and benchmarks/sweep.py; nothing is downloaded."""
from __future__ import annotations

import torch
import torch.nn as nn

SEQ, BATCH = 16, 2


class FirstOutput(nn.Module):
    """Calls a transformers model with keyword inputs and returns its first output tensor."""

    def __init__(self, model: nn.Module, *names: str):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs):
        out = self.model(**dict(zip(self.names, inputs)))
        return out[0] if not isinstance(out, torch.Tensor) else out


def _text(cls_name: str, config_name: str, vocab: int = 100, **cfg):
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, config_name)(vocab_size=vocab, **cfg)
    model = getattr(transformers, cls_name)(config).eval()
    ids = torch.randint(3, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    return FirstOutput(model, "input_ids", "attention_mask"), (ids, torch.ones_like(ids))


def _vision(cls_name: str, config_name: str, **cfg):
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(getattr(transformers, config_name)(**cfg)).eval()
    return FirstOutput(model, "pixel_values"), (torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)


H = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
HF = {
    "bert": lambda: _text("BertModel", "BertConfig", **H),
    "roberta": lambda: _text("RobertaModel", "RobertaConfig", **H),
    "distilbert": lambda: _text("DistilBertModel", "DistilBertConfig", dim=32, n_layers=2, n_heads=2, hidden_dim=64),
    "albert": lambda: _text("AlbertModel", "AlbertConfig", embedding_size=16, **H),
    "deberta-v2": lambda: _text("DebertaV2Model", "DebertaV2Config", **H),
    "electra": lambda: _text("ElectraModel", "ElectraConfig", embedding_size=16, **H),
    "gpt2": lambda: _text("GPT2Model", "GPT2Config", n_embd=32, n_layer=2, n_head=2, n_positions=64, use_cache=False,
                          bos_token_id=1, eos_token_id=2),
    "llama": lambda: _text("LlamaModel", "LlamaConfig", num_key_value_heads=1, use_cache=False, **H),
    "qwen2": lambda: _text("Qwen2Model", "Qwen2Config", num_key_value_heads=1, use_cache=False, **H),
    "t5-encoder": lambda: _text("T5EncoderModel", "T5Config", d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2),
    "vit": lambda: _vision("ViTModel", "ViTConfig", image_size=32, patch_size=8, **H),
    "swin": lambda: _vision("SwinModel", "SwinConfig", image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                            num_heads=[1, 2], window_size=4),
    "convnext": lambda: _vision("ConvNextModel", "ConvNextConfig", num_stages=2, hidden_sizes=[16, 32], depths=[1, 1]),
    "whisper-encoder": lambda: _whisper(),
    "wav2vec2": lambda: _wav2vec2(),
}


def _whisper():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                                     decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                                     num_mel_bins=16, max_source_positions=16, vocab_size=100,
                                     pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    enc = transformers.WhisperModel(cfg).get_encoder().eval()
    return FirstOutput(enc, "input_features"), (torch.randn(BATCH, 16, 32, generator=torch.Generator().manual_seed(0)),)


def _wav2vec2():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                      conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                                      num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, vocab_size=32)
    model = transformers.Wav2Vec2Model(cfg).eval()
    return FirstOutput(model, "input_values"), (torch.randn(BATCH, 400, generator=torch.Generator().manual_seed(0)),)


# -- custom modules ----------------------------------------------------------------------------

class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(32, 16), nn.Linear(32, 4)

    def forward(self, x):
        return {"features": self.a(x), "logits": self.b(x)}


class ListOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(32, 16), nn.Linear(16, 8)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return [h, self.b(h)]


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.img = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.tab = nn.Linear(10, 8)
        self.head = nn.Linear(16, 3)

    def forward(self, image, table):
        return self.head(torch.cat([self.img(image), self.tab(table)], 1))


class Buffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.linspace(-1, 1, 32))
        self.register_buffer("scale", torch.linspace(0.5, 2, 32))
        self.lin = nn.Linear(32, 8)

    def forward(self, x):
        return self.lin((x - self.mean) * self.scale)


class SharedWeights(nn.Module):
    """One Linear used twice, and an output layer tied to the embedding."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.block = nn.Linear(32, 32)
        self.out = nn.Linear(32, 50, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        h = torch.tanh(self.block(torch.tanh(self.block(h))))
        return self.out(h)


class NoGradInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.norm = nn.Linear(32, 32), nn.Linear(32, 8)

    def forward(self, x):
        with torch.no_grad():
            stats = x.abs().mean(-1, keepdim=True) + 1
        return self.norm(torch.relu(self.lin(x)) / stats)


class ShapeControlFlow(nn.Module):
    def __init__(self):
        super().__init__()
        self.small, self.big = nn.Linear(32, 8), nn.Linear(32, 8)

    def forward(self, x):
        if x.shape[-1] != 32:
            raise ValueError("needs 32 features")
        h = self.big(x) if x.shape[0] > 1 else self.small(x)
        return h.softmax(-1) if x.dim() == 2 else h


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(self.pool(x)))))


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act=nn.ReLU6):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2/V3's block: 1x1 expand (Conv-BN-ReLU6), depthwise 3x3 (groups=channels),
    an optional SE block, 1x1 project (Conv-BN), a residual where the shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4, act=nn.ReLU6, se: bool = False):
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(_conv_bn(cin, mid, act=act), _conv_bn(mid, mid, 3, stride, groups=mid, act=act),
                                  *([SqueezeExcite(mid)] if se else []), _conv_bn(mid, cout, act=None))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetish(nn.Module):
    """A small depthwise-separable ImageNet-style CNN (MobileNetV2/V3 pieces): ReLU6 and Hardswish
    activations, depthwise 3x3 convolutions, an SE block, a Linear head."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(3, 16, 3, 2), InvertedResidual(16, 16, 1), InvertedResidual(16, 24, 2),
            InvertedResidual(24, 24, 1, act=nn.Hardswish, se=True), _conv_bn(24, 64, act=nn.Hardswish))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, classes))

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


class GRUTagger(nn.Module):
    """Embedding -> bidirectional GRU -> per-token Linear (a sequence tagger)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.gru = nn.GRU(32, 32, batch_first=True, bidirectional=True)
        self.out = nn.Linear(64, 8)

    def forward(self, ids):
        return self.out(self.gru(self.emb(ids))[0])


class CRNN(nn.Module):
    """An OCR-style CRNN: a conv stack over a text-line image, columns as a sequence, a BiLSTM, a
    per-column classifier."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d((2, 1)))
        self.lstm = nn.LSTM(32 * 4, 32, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(64, 20)

    def forward(self, x):
        f = self.conv(x)  # B, C, H/4, W/2
        seq = f.permute(0, 3, 1, 2).flatten(2)  # B, W/2, C*H/4
        return self.out(self.lstm(seq)[0])


class RMSNormSwiGLU(nn.Module):
    """A Llama-style block on its own: RMSNorm, a SwiGLU MLP (SiLU gate), a residual."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.norm = nn.RMSNorm(d)
        self.gate, self.up, self.down = nn.Linear(d, 64, bias=False), nn.Linear(d, 64, bias=False), nn.Linear(64, d, bias=False)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        h = self.norm(x)
        return self.head(x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h)))


class GroupedConvNet(nn.Module):
    """ResNeXt-style grouped 3x3 convolutions (groups=4), SiLU, GroupNorm and a LayerNorm head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(32, 32, 1), nn.GroupNorm(4, 32), nn.SiLU(),
                                   nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.GroupNorm(4, 32), nn.SiLU(),
                                   nn.Conv2d(32, 32, 1))
        self.norm, self.head = nn.LayerNorm(32), nn.Linear(32, 10)

    def forward(self, x):
        h = self.stem(x)
        h = torch.nn.functional.silu(h + self.block(h))
        return self.head(self.norm(h.mean((2, 3))))


class EmbeddingPool(nn.Module):
    """Token and position embeddings, LayerNorm, masked mean pooling, a Linear classifier."""

    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(50, 32), nn.Embedding(64, 32)
        self.norm, self.head = nn.LayerNorm(32), nn.Linear(32, 4)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        h = self.norm(self.tok(ids) + self.pos(pos))
        return self.head(h.mean(1))


def _custom(cls, *shapes, ints: bool = False):
    def make():
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        ex = tuple(torch.randint(0, 50, s, generator=g) if ints else torch.randn(*s, generator=g) for s in shapes)
        return cls().eval(), ex
    return make


CUSTOM = {
    "dict-outputs": _custom(DictOut, (4, 32)),
    "list-outputs": _custom(ListOut, (4, 32)),
    "two-inputs": _custom(TwoInputs, (4, 3, 16, 16), (4, 10)),
    "buffers": _custom(Buffers, (4, 32)),
    "shared-weights": _custom(SharedWeights, (4, 12), ints=True),
    "no-grad-in-forward": _custom(NoGradInside, (4, 32)),
    "shape-control-flow": _custom(ShapeControlFlow, (4, 32)),
    "mobilenet-ish": _custom(MobileNetish, (2, 3, 32, 32)),
    "gru-tagger": _custom(GRUTagger, (2, 12), ints=True),
    "crnn-bilstm": _custom(CRNN, (2, 1, 16, 48)),
    "rmsnorm-swiglu": _custom(RMSNormSwiGLU, (4, 32)),
    "grouped-conv": _custom(GroupedConvNet, (2, 3, 16, 16)),
    "embedding-pool": _custom(EmbeddingPool, (2, 12), ints=True),
}

MODELS = {**HF, **CUSTOM}
