// Umbrella header: everything a training program needs.
#pragma once
#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/dtype.h"
#include "lowbit/autograd/error.h"
#include "lowbit/autograd/generator.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/autograd/parallel.h"
#include "lowbit/autograd/tensor.h"
