import pytest

from sabgal.config import Config, ConfigError, config_from_dict, config_to_dict, load_config, preset_names


def test_presets_load_and_pin_the_setup():
    assert {"default", "counterstain", "brightfield", "fluorescence"} <= set(preset_names())
    assert load_config("counterstain").setup.counterstain == "nuclear_fast_red"
    assert load_config("brightfield").setup.mode == "brightfield"
    assert load_config("default") == Config()  # the file documents the defaults exactly


def test_round_trip_through_dict():
    c = Config().replace(classify={"positive_threshold": 0.2}, setup={"pixel_size_um": 0.5})
    assert config_from_dict(config_to_dict(c)) == c


@pytest.mark.parametrize("text, match", [
    ("[classify]\nbogus = 1\n", "unknown key classify.bogus"),
    ("[nonsense]\nx = 1\n", "unknown section"),
    ("[classify]\npositive_threshold = -1\n", "positive_threshold"),
    ("[setup]\nmode = 'magic'\n", "setup.mode must be one of"),
    ("[stains]\nxgal_vector = [1, 2]\n", "three non-negative"),
    ("[classify\n", "not valid TOML"),
    ("[setup]\ncounterstain = 'custom'\n", "custom_counterstain_vector"),
    ("[illumination]\nencoding = 'log'\n", "illumination.encoding must be one of"),
    ("[illumination]\nencoding = 'gamma'\nencoding_gamma = 0.45\n", "encoding_gamma must be in"),
])
def test_bad_config_files_are_rejected_with_the_key_named(tmp_path, text, match):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(p)
    assert str(p) in str(err.value)


def test_missing_config_lists_presets():
    with pytest.raises(ConfigError, match="presets"):
        load_config("no_such_preset")


def test_ints_are_accepted_for_floats(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[classify]\npositive_threshold = 1\nenlarged_factor = 2\n")
    c = load_config(p)
    assert c.classify.enlarged_factor == 2.0
