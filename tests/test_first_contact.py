"""The common first-hour mistakes get an error that says what to do, not a
misleading one; data that cannot be scored is refused, not scored alike."""

from __future__ import annotations

import gzip

from conftest import CRITEO_TRAIN, MOVIES_FLAGS, MOVIES_TEST, MOVIES_TRAIN, invoke

AVAZU_LIKE = "id,click,hour,C1,site_id\n1,0,14102100,1005,a\n2,1,14102100,1005,b\n"


def test_data_lacking_the_models_columns_is_refused_not_scored_alike(movies_model, tmp_path):
    data = tmp_path / "avazu.csv"
    data.write_text(AVAZU_LIKE)
    result = invoke("predict", data, "-m", movies_model)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        f"error: {data}: has none of the model's feature columns (missing: user, item, genres, price; the data has "
        "id, click, hour, C1, site_id); wrong model or file? --allow-missing-columns scores it anyway\n")
    forced = invoke("predict", data, "-m", movies_model, "--allow-missing-columns")
    assert forced.exit_code == 0 and forced.stdout.count("\n") == 3
    assert forced.stderr.startswith("warning:")


def test_one_missing_column_of_four_is_a_warning(movies_model, tmp_path):
    data = tmp_path / "renamed.csv"
    data.write_text(MOVIES_TEST.read_text().replace("price", "cost", 1))
    result = invoke("eval", data, "-m", movies_model, "--json")
    assert result.exit_code == 0
    assert result.stderr == f"warning: {data}: column(s) price missing; treated as missing values\n"


def test_criteo_data_without_the_preset_says_to_use_it(tmp_path):
    data = tmp_path / "day0.tsv"
    data.write_bytes(gzip.decompress(CRITEO_TRAIN.read_bytes())[:20000])
    result = invoke("train", data, "-o", tmp_path / "m.fm")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {data}:1: the first line looks like data, not a header (")
    assert "give --preset criteo" in result.stderr


def test_a_semicolon_separated_csv_is_read(tmp_path):
    data = tmp_path / "semi.csv"
    data.write_text("label;user;item\n" + "".join(f"{i % 2};u{i % 7};i{i % 5}\n" for i in range(200)))
    result = invoke("train", data, "-o", tmp_path / "m.fm", "-q", "--json", "--epochs", "1")
    assert result.exit_code == 0, result.stderr
    assert '"rows": 200' in result.stdout


def test_label_not_found_suggests_what_to_give(tmp_path):
    data = tmp_path / "avazu.csv"
    data.write_text(AVAZU_LIKE)
    result = invoke("train", data, "-o", tmp_path / "m.fm")
    assert result.stderr == (f"error: {data}: label column 'label' not found (columns: id, click, hour, C1, site_id); "
                             "Avazu data: try --preset avazu (or --label click)\n")
    near = invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, "--label", "lable", "-o", tmp_path / "m.fm")
    assert near.stderr.endswith("; did you mean --label label?\n")


def test_keep_and_numeric_columns_that_are_absent_name_the_file_and_the_columns(movies_model, tmp_path):
    keep = invoke("predict", MOVIES_TEST, "-m", movies_model, "--keep", "sesion")
    assert keep.stderr == (f"error: {MOVIES_TEST}: --keep column(s) sesion not found "
                           "(columns: label, user, item, genres, price, request_id)\n")
    numeric = invoke("train", MOVIES_TRAIN, "--numeric", "pric", "-o", tmp_path / "m.fm")
    assert numeric.stderr == (f"error: {MOVIES_TRAIN}: numeric column 'pric' is not in the data "
                              "(columns: label, user, item, genres, price, request_id)\n")


def test_an_id_column_used_as_a_feature_gets_a_warning(tmp_path):
    result = invoke("train", MOVIES_TRAIN, "--multi", "genres", "--numeric", "price", "-o", tmp_path / "m.fm", "-q",
                    "--epochs", "1")
    assert result.exit_code == 0
    assert result.stderr == (f"warning: {MOVIES_TRAIN}: column 'request_id' has a different value in 100% of the "
                             "first 5,000 rows (an id?); it cannot generalise - leave it out with --ignore request_id\n")


def test_logs_off_a_terminal_are_one_line_per_event(tmp_path):
    """stderr to a file or CI: epoch lines longer than 80 columns stay whole, and the
    final table does not repeat them."""
    import re
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "fmctr", "train", str(MOVIES_TRAIN), *MOVIES_FLAGS, "-o",
                             str(tmp_path / "m.fm"), "--epochs", "2", "--valid", str(MOVIES_TEST)],
                            capture_output=True, text=True, check=True)
    lines = result.stderr.splitlines()
    epoch_line = "epoch N: train logloss N N rows/s; valid AUC N logloss N; lr N"  # (commas are in N)
    assert [re.sub(r"[\d,.]+", "N", line) for line in lines[:2]] == [epoch_line, epoch_line]
    assert len(lines) == 3 and lines[2].startswith("wrote ") and all(len(line) > 80 for line in lines[:2])


def test_predict_precision(movies_model):
    result = invoke("predict", MOVIES_TEST, "-m", movies_model, "--precision", "3")
    lines = result.stdout.splitlines()
    assert lines[0] == "probability" and len(lines) == 1001
    assert all(len(line.split(".")[1]) == 3 for line in lines[1:])
    bad = invoke("predict", MOVIES_TEST, "-m", movies_model, "--precision", "0")
    assert bad.stderr == "error: --precision must be from 1 to 17 decimal places, got 0\n"


def test_auc_undefined_is_said(movies_model, tmp_path):
    data = tmp_path / "ones.csv"
    data.write_text("\n".join(line if n == 0 else "1" + line[1:]
                              for n, line in enumerate(MOVIES_TEST.read_text().splitlines()[:50])) + "\n")
    result = invoke("eval", data, "-m", movies_model, "--json")
    assert result.exit_code == 0 and '"auc": null' in result.stdout
    assert result.stderr == f"warning: {data}: every row has label 1; AUC is undefined (printed as NaN, null in JSON)\n"


def test_plot_as_pdf_and_svg(movies_model, tmp_path):
    for name, magic in (("curves.pdf", b"%PDF"), ("curves.svg", b"<?xml")):
        result = invoke("eval", MOVIES_TEST, "-m", movies_model, "--plot", tmp_path / name)
        assert result.exit_code == 0, result.stderr
        assert (tmp_path / name).read_bytes().startswith(magic)
    wrong = invoke("eval", MOVIES_TEST, "-m", movies_model, "--plot", tmp_path / "curves.jpg")
    assert wrong.stderr == f"error: --plot {tmp_path / 'curves.jpg'}: give a file name ending in .png, .pdf or .svg\n"


def test_an_avazu_model_scores_parquet(tmp_path):
    """A preset names columns, not the format: --preset avazu trains on CSV, and the
    model scores Parquet (the README's `fmctr eval holdout.parquet`)."""
    import polars as pl

    rows = [f"{i},{int(i % 3 == 0)},1410210{i % 10},100{i % 4},s{i % 9}" for i in range(300)]
    (tmp_path / "train.csv").write_text("id,click,hour,C1,site_id\n" + "\n".join(rows) + "\n")
    pl.read_csv(tmp_path / "train.csv", infer_schema=False).write_parquet(tmp_path / "holdout.parquet")
    assert invoke("train", tmp_path / "train.csv", "--preset", "avazu", "-o", tmp_path / "m.fm", "-q").exit_code == 0
    result = invoke("eval", tmp_path / "holdout.parquet", "-m", tmp_path / "m.fm", "--json")
    assert result.exit_code == 0, result.stderr
    assert '"rows": 300' in result.stdout


def test_a_missing_valid_file_is_reported_before_training(tmp_path):
    result = invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, "--valid", tmp_path / "nope.csv", "-o", tmp_path / "m.fm")
    assert (result.exit_code, result.stderr) == (1, f"error: {tmp_path / 'nope.csv'}: no such file\n")


def test_help_shows_whole_summaries_in_panels_and_v_is_the_version():
    import re

    from fmctr import __version__

    listing = " ".join(re.sub(r"[│╭╮╰╯─]", " ", invoke("--help").stdout).split())
    assert "train Train an FM on raw or hashed data and write a self-contained model file." in listing
    assert "..." not in listing.split("Commands")[1]
    train = invoke("train", "--help").stdout
    assert "Schema (how columns become features)" in train and "Training" in train and "Hashing" in train
    assert invoke("-V").stdout == f"fmctr {__version__}\n"
    assert "training" not in invoke("predict", "--help").stdout.split("--threads")[1].split("\n")[0]


def test_metric_names_are_not_case_sensitive(tmp_path):
    result = invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, "--valid", MOVIES_TEST, "--metric", "AUC", "--epochs", "1",
                    "-o", tmp_path / "m.fm", "-q")
    assert result.exit_code == 0, result.stderr


def test_stdin_from_a_terminal_is_not_waited_on(movies_model):
    """`fmctr predict -m m.fm` typed at a prompt: say what is missing instead of waiting."""
    import os
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    proc = subprocess.run([sys.executable, "-m", "fmctr", "predict", "-m", str(movies_model)], stdin=follower,
                          capture_output=True, text=True, timeout=60)
    os.close(leader), os.close(follower)
    assert (proc.returncode, proc.stderr) == (
        1, "error: no input: give a data file, or pipe data in (stdin is a terminal)\n")


def test_exit_codes_follow_shell_conventions(tmp_path):
    """0 done, 1 an error in the input/model/options, 2 a usage error; each error one line."""
    import subprocess
    import sys

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "fmctr", *map(str, args)], capture_output=True, text=True)
        return proc.returncode, proc.stderr

    assert run("train", "--nope") == (
        2, "error: No such option: --nope (Possible options: --ignore, --model, --no-refit) (see fmctr train --help)\n")
    assert run("predict") == (2, "error: Missing option '--model' / '-m'. (see fmctr predict --help)\n")
    assert run("bogus") == (2, "error: No such command 'bogus'. (see fmctr --help)\n")
    assert run("eval", tmp_path / "nope.csv", "-m", tmp_path / "m.fm") == (1, f"error: {tmp_path / 'm.fm'}: no such model file\n")


def test_a_short_predict_does_not_load_numba(movies_model, tmp_path):
    """numba's start-up is most of a short command's time: a 10-row predict (CSV, and the
    Criteo TSV that takes the one-pass kernels when big) must not import it."""
    import subprocess
    import sys

    from conftest import CRITEO_TEST

    criteo = tmp_path / "criteo_model.fm"
    assert invoke("train", CRITEO_TRAIN, "--preset", "criteo", "--epochs", "1", "-o", criteo).exit_code == 0
    short_tsv = tmp_path / "ten.tsv"
    short_tsv.write_text("".join(CRITEO_TEST.read_text().splitlines(keepends=True)[:10]))
    short_csv = tmp_path / "ten.csv"
    short_csv.write_text("".join(MOVIES_TEST.read_text().splitlines(keepends=True)[:11]))
    for data, model in ((short_csv, movies_model), (short_tsv, criteo)):
        code = ("import sys; from fmctr.commands.cli import main; sys.argv = ['fmctr', 'predict', sys.argv[1], '-m', "
                "sys.argv[2], '-o', sys.argv[3]]\ntry: main()\nexcept SystemExit as e: assert not e.code, e.code\n"
                "assert 'numba' not in sys.modules, 'numba was imported'")
        done = subprocess.run([sys.executable, "-c", code, str(data), str(model), str(tmp_path / "p.csv")],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert len((tmp_path / "p.csv").read_text().splitlines()) == 11
