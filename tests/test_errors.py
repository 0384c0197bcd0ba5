import pytest

from finrec.errors import ConfigError, FinrecError, reject_unknown


def test_reject_unknown_names_the_key_a_close_match_and_the_allowed_keys():
    with pytest.raises(
        ConfigError, match=r"training: unknown key 'epocs' \(did you mean 'epochs'\?\); allowed keys: epochs, seed"
    ):
        reject_unknown(["seed", "epocs"], {"epochs", "seed"}, "training", ConfigError)


def test_reject_unknown_accepts_known_keys_and_defaults_to_finrec_error():
    reject_unknown(["a"], ["a", "b"], "here")
    with pytest.raises(FinrecError, match="'zzz'; allowed keys: a, b"):
        reject_unknown({"zzz": 1}, ["a", "b"], "here")
