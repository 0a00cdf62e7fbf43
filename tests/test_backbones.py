import pytest
import torch

from tlgates.backbones import Backbone, tiny_resnet, torchvision_resnet


def test_tiny_resnet_structure_and_size():
    net = tiny_resnet()
    assert isinstance(net, Backbone)
    assert len(net.blocks) == 4 and net.block_channels == [16, 32, 64, 128]
    assert net.stage_ends == [0, 1, 2, 3] and net.feature_dim == 128
    assert 300_000 < sum(p.numel() for p in net.parameters()) < 320_000


def test_feature_maps_shapes_and_pooling_match_forward():
    net = tiny_resnet(width=8, blocks_per_stage=(2, 1, 1)).eval()
    x = torch.rand(3, 3, 32, 32)
    maps = net.feature_maps(x)
    assert [m.shape[1:] for m in maps] == [(8, 32, 32), (8, 32, 32), (16, 16, 16), (32, 8, 8)]
    assert net.stage_ends == [1, 2, 3]
    torch.testing.assert_close(net(x), maps[-1].mean(dim=(2, 3)))


@pytest.mark.parametrize("arch, dim, n_blocks", [("resnet18", 512, 8), ("resnet50", 2048, 16)])
def test_torchvision_resnet_fits_the_contract(arch, dim, n_blocks):
    net = torchvision_resnet(arch).eval()
    assert net.feature_dim == dim and len(net.blocks) == n_blocks
    assert len(net.stage_ends) == 4 and net.stage_ends[-1] == n_blocks - 1
    maps = net.feature_maps(torch.rand(2, 3, 64, 64))
    assert [m.shape[1] for m in maps] == net.block_channels
    assert net(torch.rand(2, 3, 64, 64)).shape == (2, dim)


def test_bad_backbone_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="arch must be one of"):
        torchvision_resnet("vgg16")
    with pytest.raises(ValueError, match="width"):
        tiny_resnet(width=0)
    with pytest.raises(ValueError, match="blocks_per_stage"):
        tiny_resnet(blocks_per_stage=(1, 0))
