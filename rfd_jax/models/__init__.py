"""Networks (Flax linen). Imports nothing from the rest of the package.

  resnet         CIFAR ResNet-32 / ResNet-18 with the features RFD distils, class masking
  layers         the convolution shared by every network (compute dtype), the generators'
                 upsample → conv3×3 block (by phases or on the upsampled input)
  batch_norm     BatchNorm with one-pass statistics and a written-out gradient (flax's variables)
  generator      the DFCIL generators inverted from the previous model
  cmi_generator  RGAL/CMI's generator for data-free distillation
  dfkd_nets      the DFKD teachers and students (ResNet-34/18, WRN, VGG)
"""
