"""The optional CheXbert back end of the report labeler (Smit et al., EMNLP 2020)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from camegrad_jax.rrg.observations import NUM_LABEL_CLASSES, NUM_OBSERVATIONS


class CheXbertLabeler:
    """Labels reports with a CheXbert checkpoint (optional back end).

    Needs PyTorch and transformers, which this package does not install, and the CheXbert
    weights (``chexbert.pth`` from the CheXbert authors, github.com/stanfordmlgroup/CheXbert),
    which cannot be downloaded by this library. The model is BERT-base with 13 four-way heads
    and one two-way head (``no_finding``); the arg-max of each head is the label, in the same
    encoding as `label_reports` (0 blank, 1 positive, 2 negative, 3 uncertain).

    Nothing is fetched from the network: the BERT configuration and vocabulary are read with
    ``local_files_only=True``. To use it, with the weights on disk::

        pip install torch transformers
        # once, where there is network: BERT's configuration and vocabulary (its weights come
        # from chexbert.pth)
        huggingface-cli download bert-base-uncased config.json vocab.txt \\
            --local-dir weights/bert-base-uncased

    then label reports, or score generated reports with it instead of the rule-based labeler:

    >>> from camegrad_jax.rrg import CheXbertLabeler
    >>> from camegrad_jax.rrg.metrics import evaluate_reports
    >>> chexbert = CheXbertLabeler(
    ...     "weights/chexbert.pth", bert_name_or_path="weights/bert-base-uncased"
    ... )  # doctest: +SKIP
    >>> chexbert(["No pleural effusion. Mild cardiomegaly."])  # doctest: +SKIP
    >>> evaluate_reports(generated, references, chexbert)  # doctest: +SKIP

    ``tests/rrg/test_labeler.py`` runs this loading path on a one-layer model of the same
    structure when torch and transformers are installed.

    Args:
      checkpoint_path: the CheXbert checkpoint: a dict with ``"model_state_dict"`` (keys with or
        without the ``"module."`` prefix), or the state dict itself.
      bert_name_or_path: where `transformers` finds the ``bert-base-uncased`` configuration and
        vocabulary: a local directory, or the name when it is in the local Hugging Face cache.
      device: a torch device string; defaults to ``"cuda"`` when available, else ``"cpu"``.
      batch_size: reports per forward pass.

    Raises:
      ImportError: when ``torch`` or ``transformers`` is not installed.
      FileNotFoundError: when ``checkpoint_path`` is not a file, or ``bert_name_or_path`` holds
        no BERT configuration and vocabulary on this machine.
      ValueError: when the checkpoint's keys are not those of CheXbert.
    """

    _REQUIRED = ("torch", "transformers")

    def __init__(
        self,
        checkpoint_path: str | os.PathLike[str],
        *,
        bert_name_or_path: str = "bert-base-uncased",
        device: str | None = None,
        batch_size: int = 16,
    ) -> None:
        path = Path(checkpoint_path)
        missing = [name for name in self._REQUIRED if importlib.util.find_spec(name) is None]
        if missing:
            note = "" if path.is_file() else f" The checkpoint {str(path)!r} does not exist either."
            raise ImportError(
                f"CheXbertLabeler needs {' and '.join(missing)}, which camegrad-jax does not "
                f"install; `pip install torch transformers` to use it.{note} The rule-based "
                "`label_reports` needs neither."
            )
        if not path.is_file():
            raise FileNotFoundError(
                f"CheXbert checkpoint not found at {str(path)!r}. The weights cannot be "
                "downloaded by camegrad-jax: get `chexbert.pth` from the CheXbert authors "
                "(github.com/stanfordmlgroup/CheXbert) and pass its path."
            )
        if batch_size < 1:
            raise ValueError(f"`batch_size` should be a positive int. Found `{batch_size}`.")

        import torch
        import transformers

        self._torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        try:
            self._tokenizer = transformers.BertTokenizer.from_pretrained(
                bert_name_or_path, local_files_only=True
            )
            config = transformers.BertConfig.from_pretrained(
                bert_name_or_path, local_files_only=True
            )
        except OSError as error:
            raise FileNotFoundError(
                f"`bert_name_or_path` {bert_name_or_path!r} holds no BERT configuration and "
                "vocabulary on this machine (nothing is downloaded): pass a directory with "
                "bert-base-uncased's config.json and vocab.txt."
            ) from error
        hidden = config.hidden_size
        heads = [torch.nn.Linear(hidden, NUM_LABEL_CLASSES) for _ in range(NUM_OBSERVATIONS - 1)]
        heads.append(torch.nn.Linear(hidden, 2))  # no_finding: blank / positive
        self._model = torch.nn.ModuleDict(
            {"bert": transformers.BertModel(config), "linear_heads": torch.nn.ModuleList(heads)}
        )
        checkpoint = torch.load(path, map_location="cpu")
        if isinstance(checkpoint, dict) and "model_state_dict" in checkpoint:
            checkpoint = checkpoint["model_state_dict"]
        # Checkpoints were saved from `nn.DataParallel`, hence the "module." prefix.
        state = {key.removeprefix("module."): value for key, value in checkpoint.items()}
        result = self._model.load_state_dict(state, strict=False)
        # Newer transformers keep `position_ids` as a buffer the old checkpoint lacks.
        missing_keys = [k for k in result.missing_keys if not k.endswith("position_ids")]
        if missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{str(path)!r} is not a CheXbert checkpoint: missing {missing_keys[:5]}, "
                f"unexpected {list(result.unexpected_keys)[:5]}."
            )
        self._model.to(self.device).eval()

    def __call__(self, reports: Sequence[str]) -> np.ndarray:
        """``int64 (len(reports), 14)`` labels, as `label_reports` returns them."""
        torch = self._torch
        out = np.zeros((len(reports), NUM_OBSERVATIONS), dtype=np.int64)
        for lo in range(0, len(reports), self.batch_size):
            batch = [" ".join(r.split()) for r in reports[lo : lo + self.batch_size]]
            tokens = self._tokenizer(
                batch, padding="longest", truncation=True, max_length=512, return_tensors="pt"
            ).to(self.device)
            with torch.no_grad():
                cls = self._model["bert"](**tokens).last_hidden_state[:, 0]
                preds = [head(cls).argmax(dim=1) for head in self._model["linear_heads"]]
            out[lo : lo + len(batch)] = torch.stack(preds, dim=1).cpu().numpy()
        return out
