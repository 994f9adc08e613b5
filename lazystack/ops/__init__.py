"""Operations on stacks: batched patches, channel statistics, normalisation, OME-Zarr writing."""
