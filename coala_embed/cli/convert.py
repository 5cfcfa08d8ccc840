"""``coala-embed convert``: the COALA authors' checkpoints into a coala-embed folder."""

from __future__ import annotations

from pathlib import Path

import click

from .common import EXISTING_FILE, boundary


@click.command("convert")
@click.option(
    "--audio-encoder",
    required=True,
    type=EXISTING_FILE,
    help="The authors' audio_encoder_epoch_200.pt.",
)
@click.option(
    "--tag-encoder",
    type=EXISTING_FILE,
    help="The authors' tag_encoder_epoch_200.pt.",
)
@click.option(
    "--scaler",
    type=EXISTING_FILE,
    required=True,
    help="scaler_top_1000_params.json (the pickled MinMaxScaler's arrays).",
)
@click.option(
    "--vocabulary",
    type=EXISTING_FILE,
    help="json/id2token_top_1000.json (tag order).",
)
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write config.json + model.safetensors.",
)
@boundary
def convert_cmd(audio_encoder, tag_encoder, scaler, vocabulary, out) -> None:
    """Convert the COALA authors' checkpoints into a coala-embed folder (safetensors; old files are read
    with torch.load(weights_only=True) only).

    \b
    Output: OUTPUT/config.json and OUTPUT/model.safetensors, usable with --weights OUTPUT. Example:
      coala-embed convert --audio-encoder audio_encoder_epoch_200.pt --scaler scaler_top_1000_params.json -o orig/
    """
    from ..convert import convert_original

    convert_original(audio_encoder, scaler, out, tag_encoder=tag_encoder, vocabulary=vocabulary)
    click.echo(f"converted -> {out}", err=True)
