"""A config file of the stand-in model (tests/tiny_model.py: the method contract, a
model that compiles in a second) for command-line tests whose subject is the command,
not the model: `--config=tests/stand_in_config.py`, with the dataset given by
`--config.data.datasets`."""


def get_config(variant: str = ""):
    from tests.tiny_model import tiny_train_config

    return tiny_train_config("set-by---config.data.datasets", real_model=False)
