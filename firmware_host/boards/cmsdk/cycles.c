#include "../cortexm/cycles.inc"
