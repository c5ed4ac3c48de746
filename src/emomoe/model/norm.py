"""RMSNorm with a hand-written backward: the same module and weights as `torch.nn.RMSNorm`.

Legend: N rows (every leading dim together), D model dim (the normalised features; H*Dh for QK-norm).

torch's CPU kernel fuses the forward only; autograd then runs the norm's backward as about a
dozen elementwise ops. On float32 CPU tensors the forward and the backward are each one pass of a
fused kernel (`emomoe.kernels`: 4.8x torch's forward plus backward at [4096, 256], two threads).
Elsewhere (fp32 on GPU) the backward takes the gradient of the weight and of the input in fewer
passes than autograd's, with the rows' dot product as one matrix-vector product. Other dtypes,
where torch mixes precisions, use torch's path; a weight stored narrower than the input (a bf16
model computing in fp32) is widened for the call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emomoe import kernels
from emomoe.model.linear import is_stored_narrower


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_ND: torch.Tensor, weight_D: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.fused = kernels.usable(x_ND, weight_D)
        if ctx.fused:
            y_ND, rstd_N = kernels.ops().rms_norm_forward(x_ND, weight_D, eps)
            ctx.save_for_backward(x_ND, weight_D, rstd_N)
            return y_ND
        rstd_N1 = x_ND.square().mean(dim=-1, keepdim=True).add_(eps).rsqrt_()
        ctx.save_for_backward(x_ND, weight_D, rstd_N1)
        return (x_ND * rstd_N1).mul_(weight_D)

    @staticmethod
    def backward(ctx, grad_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        if ctx.fused:
            return (*kernels.ops().rms_norm_backward(grad_ND, *ctx.saved_tensors), None)
        # y = w * xhat, xhat = x * rstd:  dL/dw = sum_rows g * xhat,
        # dL/dx = rstd * (g * w - xhat * mean(g * w * xhat)), and g * w * xhat = (g * xhat) * w.
        x_ND, weight_D, rstd_N1 = ctx.saved_tensors
        xhat_ND = x_ND * rstd_N1
        gxhat_ND = grad_ND * xhat_ND
        grad_weight_D = gxhat_ND.sum(dim=0)
        mean_N1 = (gxhat_ND @ weight_D).div_(x_ND.shape[-1])[:, None]
        grad_x_ND = (grad_ND * weight_D).sub_(xhat_ND.mul_(mean_N1)).mul_(rstd_N1)
        return grad_x_ND, grad_weight_D, None


class RMSNorm(nn.RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if weight is not None and is_stored_narrower(x, weight):
            # D values widened per call (nothing next to a matrix): torch's fused norm needs one dtype.
            return F.rms_norm(x, self.normalized_shape, weight.to(x.dtype), self.eps)
        # Without autograd torch's fused forward is all there is (and one op is cheapest when decoding).
        plain = not torch.is_grad_enabled() or len(self.normalized_shape) != 1 or weight is None
        if plain or x.dtype != torch.float32 or weight.dtype != torch.float32:
            return super().forward(x)
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        return _RMSNormFunction.apply(x.reshape(-1, x.shape[-1]), weight, eps).view(x.shape)
