"""Training-step time of PTU (arXiv 1804.08613) against plain fine-tuning, in one run.

The models are timed in turns on the same batch (``tlgates.benchmark.step_times``), so a busy
machine slows them alike. PTU runs every layer twice: the frozen source copy (forward, and the
backward pass for its *input* only, since the layers before it train) and the trainable copy
(forward and full backward), plus the gates. Rows that show where the time goes:

- ``share (linear probe)``: the frozen network alone, no backward through it;
- ``PTU, constant gates``: both paths and the mix, the gate layers skipped;
- ``ptu``: everything. Target: at most 2.2× a fine-tuning step.

The recurrent form is timed against its own fine-tuning (the row LSTM trained as a whole, in
PyTorch's fused LSTM kernel) and against the same LSTM run as a Python loop over time steps of
an ``nn.LSTMCell``, which is how PTU has to run it (the gates act between steps).

    python benchmarks/bench_ptu.py                    # tiny ResNet, 32×32, batch 16 (CPU)
    python benchmarks/bench_ptu.py --arch resnet18 --size 224 --batch-size 64 --device cuda
"""
from __future__ import annotations

import torch
from torch import nn

from tlgates.benchmark import (
    prepare, random_batch, random_source, report, setting, step_parser, step_times,
)
from tlgates.methods import TransferModel, build_method
from tlgates.methods.ptu import RowLSTM, forced_gates, lstm_cell

TARGET_RATIO = 2.2


class CellLoopLSTM(TransferModel):
    """Fine-tuning of the row LSTM, written as a loop over an ``nn.LSTMCell`` (no fused
    kernel): the per-step cost PTU's recurrent form also pays."""

    def __init__(self, encoder: RowLSTM, num_classes: int):
        super().__init__()
        self.cell = lstm_cell(encoder.lstm).requires_grad_(True)
        self.head = nn.Linear(encoder.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = RowLSTM.rows(x)
        h = c = seq.new_zeros(len(seq), self.cell.hidden_size)
        for step in range(seq.shape[1]):
            h, c = self.cell(seq[:, step], (h, c))
        return self.head(h)


def main() -> None:
    parser = step_parser(__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=64, help="row LSTM hidden units")
    args = parser.parse_args()
    device = prepare(args)
    source = random_source(args.arch)
    k = args.classes
    constant = build_method("ptu", source, k)
    cnn = {"finetune": build_method("finetune", source, k),
           "share (linear probe)": build_method("linear", source, k),
           "PTU, constant gates": constant,
           "ptu": build_method("ptu", source, k)}
    encoder = RowLSTM(3 * args.size, args.hidden).eval()
    rnn = {"finetune": build_method("ptu-rnn", encoder, k, transfer="finetune"),
           "finetune, LSTMCell loop": CellLoopLSTM(encoder, k),
           "ptu-rnn": build_method("ptu-rnn", encoder, k)}
    x, y = random_batch(args, device)
    cnn_label = f"CNN ({args.arch}, {args.size}×{args.size})"
    rnn_label = f"RNN (row LSTM, {args.hidden} hidden units, {args.size} rows)"
    tables = {}
    for label, models in ((cnn_label, cnn), (rnn_label, rnn)):
        with forced_gates(constant, 0.5, 0.5):  # the gate layers are skipped
            tables[label] = step_times(models, x, y, rounds=args.rounds, steps=args.steps)
    report(tables[cnn_label], setting(args, device, cnn_label), args.rounds, row="ptu",
           label="PTU (CNN)", target=TARGET_RATIO)
    print(f"\nTraining step, median over {args.rounds} interleaved rounds "
          f"({setting(args, device, rnn_label)}):")
    print(tables[rnn_label].to_string())
    rnn_table = tables[rnn_label]
    loop = rnn_table.loc["ptu-rnn", "ms per step"] / rnn_table.loc[
        "finetune, LSTMCell loop", "ms per step"]
    print(f"PTU (RNN) costs {rnn_table.loc['ptu-rnn', 'ratio to finetune']:.2f}× fine-tuning "
          f"with the fused LSTM kernel, {loop:.2f}× fine-tuning written as the same cell loop.")


if __name__ == "__main__":
    main()
