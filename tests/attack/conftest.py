import pytest
import torch


@pytest.fixture(scope="session")
def sneaker_target():
    """The shipped zoo ItD erasing sneaker (the zoo's SAE, concept set and edit), its stock
    pipeline and the zoo's judge."""
    from visionsae.eval.attack import zoo_target

    torch.set_num_threads(1)
    return zoo_target(["sneaker"])
