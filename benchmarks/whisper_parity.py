"""whisper-base parity: the converted transformers model vs CTranslate2 / faster-whisper on the same weights.

(a) Encoder: the same log-mel features (transformers' WhisperFeatureExtractor) go through the converted
    WhisperForConditionalGeneration encoder and through `ctranslate2.models.Whisper(ct2_dir).encode`, both in float32
    on CPU; max / mean |difference| over all elements of 20 clips. Tolerance: one fp16 step (2**-10) relative to the
    largest output magnitude. The shipped weights are float16, so the model itself is only defined to fp16
    precision; a float32 difference below one fp16 step at the output's scale is arithmetic order (different GEMM
    and GELU kernels), not a conversion error. A swapped or mis-split tensor gives differences of order 1.
(b) Greedy transcripts: converted HF `generate(language="en", task="transcribe")` (no timestamps) vs faster-whisper
    `WhisperModel(ct2_dir, device="cpu", compute_type="float32").transcribe(beam_size=1, temperature=0,
    without_timestamps=True, language="en")`, each with its own feature extractor; exact text matches out of 20.
(c) The decoder alone: on the same (HF) features, CTranslate2's greedy `Whisper.generate` with faster-whisper's
    prompt and suppression settings vs HF `generate`: identical token ids out of 20.
(d) The front end: HF `generate` on faster-whisper's features (it takes the mel of the content only and zero-pads
    the mel to 3000 frames, where HF/openai-whisper pad the audio with 30 s of silence before the mel) vs
    faster-whisper's text; clips that faster-whisper drops by its no-speech rule (no_speech_prob > 0.6 and
    avg_logprob < -1) are counted apart.

Also times the one-time conversion into a fresh cache and a later cached load. FSDD clips are 8 kHz mono WAVs,
decoded with soundfile and resampled to 16 kHz with torchaudio. Writes benchmarks/results/whisper_parity.json.

    python benchmarks/whisper_parity.py [--fsdd ../shared/data/fsdd/recordings] [--clips 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FP16_STEP = 2.0 ** -10  # spacing of float16 numbers in [1, 2): one fp16 step relative to the value


def cpu_flags() -> list[str]:
    out = subprocess.run(r"grep -o 'avx512_bf16\|amx_bf16\|avx2' /proc/cpuinfo | sort -u", shell=True,
                         capture_output=True, text=True).stdout
    return out.split()


def load_clip(path: Path) -> np.ndarray:
    import soundfile as sf
    import torch
    import torchaudio.functional as AF

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return AF.resample(torch.from_numpy(audio.mean(axis=1)), rate, 16000).numpy()


def pick_clips(folder: Path, n: int) -> list[Path]:
    """n clips spread over the sorted list (so over digits and speakers), the same every run."""
    files = sorted(folder.glob("*.wav"))
    if len(files) < n:
        sys.exit(f"need {n} WAVs in {folder}, found {len(files)}")
    return [files[i * len(files) // n] for i in range(n)]


def time_conversion(cache: Path) -> tuple[Path, dict]:
    """First call converts into an empty cache; the second reuses it; then a full model + processor load."""
    os.environ["TUNEFORGE_CACHE"] = str(cache)
    from tuneforge.models.whisper_package import whisper_base_folder
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    t0 = time.perf_counter()
    folder = whisper_base_folder()
    t1 = time.perf_counter()
    assert whisper_base_folder() == folder
    t2 = time.perf_counter()
    model = WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    WhisperProcessor.from_pretrained(folder, local_files_only=True)
    t3 = time.perf_counter()
    del model
    return folder, {"first_use_join_hash_convert_s": round(t1 - t0, 2), "cached_folder_check_s": round(t2 - t1, 2),
                    "cached_model_and_processor_load_s": round(t3 - t2, 2)}


def encoder_parity(hf_model, processor, ct2_dir: Path, clips: list[np.ndarray], threads: int) -> dict:
    import ctranslate2
    import torch

    ct2 = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32", intra_threads=threads)
    per_clip, sums, count, max_ref = [], 0.0, 0, 0.0
    for audio in clips:
        feats = processor(audio, sampling_rate=16000, return_tensors="np").input_features.astype(np.float32)
        with torch.no_grad():
            hf = hf_model.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
        ref = np.array(ct2.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats)), to_cpu=True))
        diff = np.abs(hf - ref)
        per_clip.append({"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())})
        sums, count, max_ref = sums + float(diff.sum()), count + diff.size, max(max_ref, float(np.abs(ref).max()))
    max_diff = max(c["max_abs_diff"] for c in per_clip)
    tolerance = FP16_STEP * max_ref
    return {"max_abs_diff": max_diff, "mean_abs_diff": sums / count, "max_abs_ct2_output": max_ref,
            "tolerance_max_abs": tolerance, "within_tolerance": max_diff <= tolerance, "per_clip": per_clip}


def _hf_greedy(hf_model, processor, features: np.ndarray) -> tuple[list[int], str]:
    import torch

    with torch.no_grad():
        ids = hf_model.generate(torch.from_numpy(features[None]), language="en", task="transcribe",
                                return_timestamps=False)[0].tolist()
    ids = [i for i in ids if i < processor.tokenizer.eos_token_id]  # text tokens only (no prompt, no <|endoftext|>)
    return ids, processor.tokenizer.decode(ids, skip_special_tokens=True).strip()


def decode_comparisons(hf_model, processor, ct2_dir: Path, clips: list[np.ndarray], threads: int) -> list[dict]:
    """Per clip: (b) HF vs faster-whisper, each with its own front end; (c) on HF's features, CTranslate2's greedy
    decoder (faster-whisper's settings) vs HF, token for token; (d) on faster-whisper's features (mel of the content
    only, zero-padded to 3000 frames), HF vs faster-whisper's text."""
    import ctranslate2
    from faster_whisper import WhisperModel
    from faster_whisper.audio import pad_or_trim

    fw = WhisperModel(str(ct2_dir), device="cpu", compute_type="float32", cpu_threads=threads)
    tok = processor.tokenizer
    prompt = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])
    rows = []
    for audio in clips:
        hf_feats = processor(audio, sampling_rate=16000, return_tensors="np").input_features[0].astype(np.float32)
        fw_feats = pad_or_trim(fw.feature_extractor(audio)[:, :-1]).astype(np.float32)  # as transcribe() does
        hf_ids, hf_text = _hf_greedy(hf_model, processor, hf_feats)
        segments, _ = fw.transcribe(audio, beam_size=1, temperature=0, without_timestamps=True, language="en")
        fw_text = "".join(s.text for s in segments).strip()
        ct2 = fw.model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(hf_feats[None])), [prompt],
                                beam_size=1, suppress_blank=True, suppress_tokens=[-1], max_length=448)
        ct2_ids = [i for i in ct2[0].sequences_ids[0] if i < tok.eos_token_id]
        _, hf_on_fw_text = _hf_greedy(hf_model, processor, fw_feats)
        rows.append({"hf": hf_text, "faster_whisper": fw_text, "match": hf_text == fw_text,
                     "hf_ids": hf_ids, "ct2_ids_same_features": ct2_ids, "ids_match": hf_ids == ct2_ids,
                     "hf_on_fw_features": hf_on_fw_text, "fw_features_match": hf_on_fw_text == fw_text,
                     "fw_skipped_as_no_speech": fw_text == "" and hf_on_fw_text != ""})
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fsdd", default=str(HERE.parent.parent / "shared" / "data" / "fsdd" / "recordings"))
    p.add_argument("--clips", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(HERE / "results" / "whisper_parity.json"))
    args = p.parse_args()
    if not Path(args.fsdd).is_dir():
        sys.exit(f"FSDD recordings not found at {args.fsdd}; pass --fsdd")
    import ctranslate2
    import faster_whisper
    import torch
    import transformers
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from tuneforge.models.whisper_package import WHISPER_BASE, assemble_ct2_dir

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="whisper_parity_"))
    folder, timings = time_conversion(work / "cache")
    ct2_dir = assemble_ct2_dir(WHISPER_BASE, work / "ct2")  # joined model.bin + config + tokenizer + vocabulary
    paths = pick_clips(Path(args.fsdd), args.clips)
    clips = [load_clip(f) for f in paths]
    model = WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    processor = WhisperProcessor.from_pretrained(folder, local_files_only=True)
    t0 = time.perf_counter()
    encoder = encoder_parity(model, processor, ct2_dir, clips, args.threads)
    t1 = time.perf_counter()
    rows = decode_comparisons(model, processor, ct2_dir, clips, args.threads)
    timings |= {"encoder_parity_s": round(t1 - t0, 1), "decode_comparisons_s": round(time.perf_counter() - t1, 1)}
    for row, path, enc in zip(rows, paths, encoder["per_clip"]):
        row["clip"], row["encoder_max_abs_diff"] = path.name, enc["max_abs_diff"]
    result = {
        "command": "python benchmarks/whisper_parity.py " + " ".join(sys.argv[1:]),
        "encoder": {k: v for k, v in encoder.items() if k != "per_clip"},
        "clips": len(rows),
        "b_transcripts_exact_matches": sum(r["match"] for r in rows),
        "c_same_features_token_id_matches": sum(r["ids_match"] for r in rows),
        "d_fw_features_text_matches": sum(r["fw_features_match"] for r in rows),
        "d_fw_skipped_as_no_speech": sum(r["fw_skipped_as_no_speech"] for r in rows),
        "b_differences": [{k: r[k] for k in ("clip", "hf", "faster_whisper", "hf_on_fw_features")}
                          for r in rows if not r["match"]],
        "rows": rows, "timings": timings,
        "cpu_flags": cpu_flags(), "threads": args.threads, "cpu": platform.processor() or platform.machine(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "ctranslate2": ctranslate2.__version__, "faster_whisper": faster_whisper.__version__},
        "note": "shared 2-core machine (several developers): timings are only indicative",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print_table(result)
    shutil.rmtree(work, ignore_errors=True)


def print_table(r: dict) -> None:
    e = r["encoder"]
    print(f"encoder  max|Δ| {e['max_abs_diff']:.3g}  mean|Δ| {e['mean_abs_diff']:.3g}  max|out| "
          f"{e['max_abs_ct2_output']:.3g}  tolerance {e['tolerance_max_abs']:.3g}  within: {e['within_tolerance']}")
    n = r["clips"]
    print(f"(b) transcripts, own front ends: {r['b_transcripts_exact_matches']}/{n} exact | (c) same features, "
          f"CT2 vs HF token ids: {r['c_same_features_token_id_matches']}/{n} | (d) faster-whisper's features: "
          f"{r['d_fw_features_text_matches']}/{n} exact, {r['d_fw_skipped_as_no_speech']} skipped by its "
          f"no-speech rule")
    print(f"{'clip':<17}{'(b) HF':<14}{'(b) faster-whisper':<20}{'(c) ids':<9}{'(d) HF on fw feats':<20}"
          f"{'enc max|Δ|':>10}")
    for row in r["rows"]:
        print(f"{row['clip']:<17}{row['hf'][:12]:<14}{row['faster_whisper'][:18]:<20}"
              f"{'same' if row['ids_match'] else 'DIFF':<9}{row['hf_on_fw_features'][:18]:<20}"
              f"{row['encoder_max_abs_diff']:>10.3g}")
    print("timings:", r["timings"], "| cpu flags:", r["cpu_flags"])


if __name__ == "__main__":
    main()
